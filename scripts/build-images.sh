#!/usr/bin/env bash
# Build featx's image (docker/Dockerfile) and, with --node, the pod sandbox image of the real test
# node, skipping each one whose inputs have not changed:
#
#   featx-cpu:dev        FEATX_IMAGE_FLAVOR=cpu (the default; `make image-cpu`): kind, CI, local clusters
#   featx:dev            FEATX_IMAGE_FLAVOR=cuda (`make image`): PyPI's torch, its CUDA runtime, by hash
#   featx.local/pause:1  `pause` from scripts/build-control-plane.sh, FROM scratch; only with --node
#
# Each image carries the label featx.io/inputs = sha256 of what goes into it (Dockerfile, pins,
# featx's sources, README, build arguments, base image id). A matching image is kept; the Docker
# engine's layer cache (outside the checkout) makes a rebuild after a source change take about a
# minute: the pip layer depends only on docker/requirements.lock and TORCH_INDEX_URL, so the two
# flavours share it where their torch comes from the same place. The last stdout line is the image.
#
# Settings (environment; explicit settings win):
#   FEATX_IMAGE_FLAVOR     cpu | cuda
#   IMAGE                  featx-cpu:dev (cpu) or featx:dev (cuda)
#   BASE_IMAGE             the Dockerfile's default (the official python:3.11-slim) when the engine
#                          has it or can pull it; otherwise FEATX_LOCAL_BASE=1
#   FEATX_LOCAL_BASE=1     no registry: make the base from Debian packages (scripts/build-base-images.sh)
#   TORCH_INDEX_URL        cpu: the PyTorch CPU index (empty without a registry: nothing but PyPI is
#                          reachable then); cuda: always empty (PyPI's CUDA build, hash-checked)
#   EXTRA_CA_CERT_FILE     PEM file(s) of a TLS-intercepting proxy's CA, for pip inside the build;
#                          the final image never holds it. Default: the machine's local CAs
#                          (/usr/local/share/ca-certificates/*.crt, Debian's place for them), if any
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
FLAVOR="${FEATX_IMAGE_FLAVOR:-cpu}"
OFFICIAL_BASE="python:3.11.14-slim-trixie"  # docker/Dockerfile's default BASE_IMAGE
CPU_INDEX="https://download.pytorch.org/whl/cpu"
PAUSE_IMAGE="featx.local/pause:1"

log() { echo "[build-images] $*" >&2; }
die() { echo "build-images: $*" >&2; exit 1; }
inputs_of() { docker image inspect -f '{{ index .Config.Labels "featx.io/inputs" }}' "$1" 2>/dev/null || true; }

docker info >/dev/null 2>&1 || die "the Docker engine does not answer; start it (scripts/ensure-dockerd.sh) and retry"

case "${FLAVOR}" in
    cpu) IMAGE="${IMAGE:-featx-cpu:dev}" ;;
    cuda) IMAGE="${IMAGE:-featx:dev}"
          [[ -z "${TORCH_INDEX_URL:-}" ]] || die "FEATX_IMAGE_FLAVOR=cuda takes torch from PyPI (its CUDA build): unset TORCH_INDEX_URL (it is ${TORCH_INDEX_URL})"
          TORCH_INDEX_URL="" ;;
    *) die "FEATX_IMAGE_FLAVOR=${FLAVOR}: use cpu or cuda" ;;
esac

if [[ -z "${BASE_IMAGE:-}" && ! -v FEATX_LOCAL_BASE ]] \
        && ! docker image inspect "${OFFICIAL_BASE}" >/dev/null 2>&1 \
        && ! timeout 120 docker pull -q "${OFFICIAL_BASE}" >/dev/null 2>&1; then
    log "no registry (${OFFICIAL_BASE} cannot be pulled): a Debian-made base, torch from PyPI"
    FEATX_LOCAL_BASE=1
    : "${TORCH_INDEX_URL=}"
fi
if [[ "${FLAVOR}" == cpu ]]; then : "${TORCH_INDEX_URL=${CPU_INDEX}}"; fi

build_args=(--build-arg "FLAVOR=${FLAVOR}" --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL}")
if [[ "${FEATX_LOCAL_BASE:-0}" == 1 ]]; then
    BASE_IMAGE="$(bash scripts/build-base-images.sh | tail -n1)"
fi
[[ -n "${BASE_IMAGE:-}" ]] && build_args+=(--build-arg "BASE_IMAGE=${BASE_IMAGE}")
extra_ca=""
if [[ ! -v EXTRA_CA_CERT_FILE ]]; then
    local_cas=(/usr/local/share/ca-certificates/*.crt)
    [[ -e "${local_cas[0]}" ]] && EXTRA_CA_CERT_FILE="${local_cas[*]}"
fi
if [[ -n "${EXTRA_CA_CERT_FILE:-}" ]]; then
    # shellcheck disable=SC2086  # a glob such as /usr/local/share/ca-certificates/*.crt is allowed
    extra_ca="$(cat ${EXTRA_CA_CERT_FILE})" || die "cannot read EXTRA_CA_CERT_FILE=${EXTRA_CA_CERT_FILE}"
    build_args+=(--build-arg "EXTRA_CA_CERT=${extra_ca}")
fi

base_id=""
if [[ -n "${BASE_IMAGE:-}" ]]; then
    base_id="$(docker image inspect -f '{{ .Id }}' "${BASE_IMAGE}" 2>/dev/null || echo "${BASE_IMAGE}")"
fi
inputs="$(
    {
        git ls-files -z -co --exclude-standard -- docker/Dockerfile docker/requirements.lock pyproject.toml README.md featx 2>/dev/null \
            | sort -z | xargs -0 sha256sum
        printf 'flavor=%s base=%s torch_index=%s ca=%s\n' "${FLAVOR}" "${base_id}" "${TORCH_INDEX_URL}" \
            "$(printf '%s' "${extra_ca}" | sha256sum | cut -c1-16)"
    } | sha256sum | cut -c1-32
)"
if [[ "$(inputs_of "${IMAGE}")" == "${inputs}" ]]; then
    log "have ${IMAGE} (inputs ${inputs})"
else
    log "docker build -f docker/Dockerfile -t ${IMAGE} . (${FLAVOR}; inputs ${inputs}; cold: about 8 min)"
    start=${SECONDS}
    DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -f docker/Dockerfile -t "${IMAGE}" \
        --label "featx.io/inputs=${inputs}" ${build_args[@]+"${build_args[@]}"} . >&2
    log "built ${IMAGE} in $((SECONDS - start)) s"
    # The image it replaced (untagged now) holds gigabytes: drop it; the layer cache stays.
    docker image prune -f --filter "label=featx.io/inputs" >/dev/null
fi

if [[ "${1:-}" == --node ]]; then
    bin_dir="$(bash scripts/build-control-plane.sh | tail -n1)"
    pause_inputs="$(sha256sum "${bin_dir}/pause" | cut -c1-32)"
    if [[ "$(inputs_of "${PAUSE_IMAGE}")" == "${pause_inputs}" ]]; then
        log "have ${PAUSE_IMAGE}"
    else
        ctx="$(mktemp -d /tmp/featx-pause.XXXXXX)"
        cp "${bin_dir}/pause" "${ctx}/pause"
        printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"${ctx}/Dockerfile"
        DOCKER_BUILDKIT=0 docker build -q -t "${PAUSE_IMAGE}" --label "featx.io/inputs=${pause_inputs}" "${ctx}" >/dev/null
        rm -rf "${ctx}"
        log "built ${PAUSE_IMAGE}"
    fi
fi
echo "${IMAGE}"
