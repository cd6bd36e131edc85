#!/usr/bin/env bash
# `make local-kind-down`: delete the kind cluster of `make local-kind` (and everything in it:
# SeaweedFS data, Secrets, Jobs). The featx-cpu:dev image stays in the local Docker engine.
set -euo pipefail

CLUSTER="${KIND_CLUSTER:-featx}"
command -v kind >/dev/null 2>&1 || { echo "local-kind-down: kind not found on PATH" >&2; exit 1; }
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    kind delete cluster --name "${CLUSTER}"
else
    echo "local-kind-down: no kind cluster named ${CLUSTER}; nothing to delete" >&2
fi
