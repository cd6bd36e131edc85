#!/usr/bin/env bash
# `make local-cluster`: the whole featx stack on this Linux machine with only a Docker engine (no
# kind, no registry): a local control plane and one real node (containerd, runc, kubelet,
# kube-proxy, CoreDNS, built from Go modules by scripts/build-control-plane.sh) run featx's images.
#
#   1. scripts/ensure-dockerd.sh; scripts/build-images.sh --node  (images; Debian-made base without a registry)
#   2. python -m localcluster.local up                           (control plane + node; prints the kubeconfig)
#   3. scripts/local-deploy.sh                                     (the same steps as `make local-kind` after
#                                                                   the cluster exists and the image is loaded)
#
# Needs root (the node's containerd, kubelet and iptables rules). Everything stays on this machine:
# the pods' bridge does no NAT. `make local-cluster-down` removes it all.
# Settings: those of scripts/build-images.sh and scripts/local-deploy.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
export PATH="${ROOT}/.venv/bin:${PATH}"

[[ "$(id -u)" == 0 ]] || { echo "local-cluster: needs root (containerd, kubelet); or use make local-kind" >&2; exit 1; }
bash scripts/ensure-dockerd.sh
kubeconfig="$("${PYTHON}" -m localcluster.local up | tail -n1)" \
    || { echo "local-cluster: the cluster did not start (see above)" >&2; exit 1; }
echo "export KUBECONFIG=${kubeconfig}" >&2  # pasteable as is; the "Next:" lines repeat it
KUBECONFIG="${kubeconfig}" FEATX_DOWN_HINT="make local-cluster-down                                # remove the cluster" \
    exec bash scripts/local-deploy.sh
