#!/usr/bin/env bash
# `make local-kind`: the whole featx stack on a local kind cluster, CPU only, in about 10 minutes.
#
#   1. kind create cluster --config k8s/kind-config.yaml            (cluster "featx"; kept if it exists)
#   2. scripts/build-images.sh                                      (featx-cpu:dev, skipped when unchanged)
#   3. kind load docker-image featx-cpu:dev --name featx
#   4-7. scripts/local-deploy.sh: restricted namespace, SeaweedFS and its bucket, helm install of
#      the chart, wait until every smoke model is done, featx status (shared with `make local-cluster`)
#
# Needs docker (running), kind, kubectl and helm on PATH. Settings (environment):
#   KIND_CLUSTER=featx  KIND_NODE_IMAGE=<kind's default>
#   FEATX_WAIT_S=1800 (how long step 6 may take)  FEATX_POLL_S=10 (between status checks)
#   SKIP_BUILD=1 (reuse an existing featx-cpu:dev); the settings of scripts/build-images.sh
# Exits non-zero when a step failed or the run did not finish. Remove everything with
# `make local-kind-down` (scripts/local-kind-down.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"

CLUSTER="${KIND_CLUSTER:-featx}"
IMAGE=featx-cpu:dev  # also in k8s/local-values.yaml and k8s/seaweedfs-bucket-job.yaml
CONTEXT="kind-${CLUSTER}"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'local-kind: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found on PATH; install it (see README, 'make local-kind')"
done
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer; start Docker and retry"

# 1. Cluster
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER}"; then
    log "kind cluster ${CLUSTER} exists: reusing it"
else
    log "kind create cluster --name ${CLUSTER} --config k8s/kind-config.yaml"
    node_image=()
    if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
        node_image=(--image "${KIND_NODE_IMAGE}")
    fi
    kind create cluster --name "${CLUSTER}" --config k8s/kind-config.yaml ${node_image[@]+"${node_image[@]}"} --wait 120s
fi

# 2-3. Image
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "scripts/build-images.sh (docker build -f docker/Dockerfile -t ${IMAGE} .)"
    IMAGE="${IMAGE}" bash scripts/build-images.sh >/dev/null
fi
log "kind load docker-image ${IMAGE} --name ${CLUSTER}"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

# 4-7. Everything after "the cluster exists and the image is loaded"
KUBE_CONTEXT="${CONTEXT}" FEATX_DOWN_HINT="make local-kind-down                                   # delete the cluster" \
    exec bash scripts/local-deploy.sh
