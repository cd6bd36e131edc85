#!/usr/bin/env bash
# Build a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), kwok/kwokctl and helm from Go modules, for the featx test suite; and the parts of
# a real node beside it: kubelet, kube-proxy, containerd 2.x (+ shim, ctr), runc, a cluster DNS
# (CoreDNS with only the plugins a test cluster uses) and the static `pause` binary of the sandbox
# image (scripts/build-images.sh wraps it into an image); and Kueue (cmd/kueue and its CRDs) for the
# suite's Kueue tier.
#
# Why from source: this machine (and CI) reaches only package registries, not GitHub releases,
# dl.k8s.io or container registries, so kwokctl cannot download its binaries itself.
#
# Binaries are cached OUTSIDE the checkout, keyed by version:
#   ${FEATX_TOOLS_DIR:-$HOME/.cache/featx/tools}/k8s-<k8s>-kwok-<kwok>/bin/
#   ${FEATX_TOOLS_DIR:-$HOME/.cache/featx/tools}/helm-<helm>/bin/helm   (symlinked into the bin dir)
#   ${FEATX_TOOLS_DIR:-$HOME/.cache/featx/tools}/kueue-<kueue>/bin/kueue (symlinked too; its CRDs in
#     kueue-<kueue>/crds/, linked as <bin dir>/../kueue-crds)
# A warm cache returns at once. The last stdout line is the bin directory; progress goes to stderr.
# Each binary records how it was built (.<name>.recipe), so a version bump rebuilds only what changed.
# Cold build: ~35 min of CPU (about 18 min on 2 idle cores), ~5 GB of Go build cache (default
# GOCACHE, or set GOCACHE), ~2.2 GB peak RSS. kwok and helm use k8s.io libraries v0.37, Kubernetes
# v0.36: those are compiled twice. runc needs cgo, libseccomp-dev and pkg-config; pause a static libc.
set -euo pipefail

K8S_VERSION="v1.36.3"     # k8s.io/kubernetes; staging modules are v0.<minor>.<patch>
ETCD_VERSION="v3.6.16"    # go.etcd.io/etcd/server/v3; must be >= 3.5.13 (RequestWatchProgress)
KWOK_VERSION="v0.8.0"     # sigs.k8s.io/kwok
HELM_VERSION="v3.22.0"    # helm.sh/helm/v3
CONTAINERD_VERSION="v2.2.9"  # github.com/containerd/containerd/v2; Kubernetes >= 1.36 needs 2.x
RUNC_VERSION="v1.3.3"     # github.com/opencontainers/runc
COREDNS_VERSION="v1.12.4" # github.com/coredns/coredns
KUEUE_VERSION="v0.17.0"   # sigs.k8s.io/kueue (cmd/kueue; CRDs from config/components/crd/bases)

TOOLS_DIR="${FEATX_TOOLS_DIR:-$HOME/.cache/featx/tools}"
DEST="${TOOLS_DIR}/k8s-${K8S_VERSION}-kwok-${KWOK_VERSION}"
BIN_DIR="${DEST}/bin"
HELM_DEST="${TOOLS_DIR}/helm-${HELM_VERSION}"
KUEUE_DEST="${TOOLS_DIR}/kueue-${KUEUE_VERSION}"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwokctl helm
          kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc coredns pause kueue)
RECIPE_REV=4               # bump when the way binaries are built changes
STAMP="rev=${RECIPE_REV} k8s=${K8S_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION} helm=${HELM_VERSION}"
STAMP+=" containerd=${CONTAINERD_VERSION} runc=${RUNC_VERSION} coredns=${COREDNS_VERSION} kueue=${KUEUE_VERSION}"

is_complete() {
    [[ -f "${DEST}/VERSIONS" && "$(cat "${DEST}/VERSIONS")" == "${STAMP}" ]] || return 1
    local b
    for b in "${BINARIES[@]}"; do [[ -x "${BIN_DIR}/${b}" ]] || return 1; done
    [[ -f "${DEST}/stages/pod-ready.yaml" && -f "${DEST}/kueue-crds/kueue.x-k8s.io_clusterqueues.yaml" ]]
}

# Fast path: nothing to do.
if is_complete; then
    echo "${BIN_DIR}"
    exit 0
fi

log() { echo "[build-control-plane] $*" >&2; }

command -v go >/dev/null || { log "go is required (Go ${K8S_VERSION} needs Go 1.26.x)"; exit 1; }

mkdir -p "${TOOLS_DIR}"
# Serialise concurrent runs (parallel test sessions, CI jobs sharing a machine).
if command -v flock >/dev/null; then
    exec 9>"${TOOLS_DIR}/.build.lock"
    flock 9
    if is_complete; then echo "${BIN_DIR}"; exit 0; fi
fi

export GOFLAGS="-mod=mod -buildvcs=false -trimpath"
export CGO_ENABLED=0          # static binaries, no C toolchain needed
export GO111MODULE=on
# Go >= 1.27 defaults to encoding/json v2, with which kube-apiserver serves a broken /openapi/v2.
case "$(go env GOVERSION)" in
    go1.2[7-9]*|go1.[3-9]*) export GOEXPERIMENT="${GOEXPERIMENT:+${GOEXPERIMENT},}nojsonv2" ;;
esac

PARTIAL="${DEST}.partial"     # binaries land here one by one; a failed run resumes from it
SRC="${TOOLS_DIR}/src"        # throw-away wrapper modules
if [[ ! -d "${PARTIAL}" && -d "${DEST}" ]]; then
    cp -a --link "${DEST}" "${PARTIAL}"   # an outdated cache: keep the binaries still valid
fi
mkdir -p "${PARTIAL}/bin" "${SRC}"
start=${SECONDS}
GO_VERSION="$(go env GOVERSION)"

# Build one binary from a wrapper module dir: build_in <module dir> <output> <package> [ldflags].
# Skipped when <output> exists and was built the same way (module dir names carry the versions).
build_in() {
    local dir="$1" out="$2" pkg="$3" ldflags="${4:-}"
    local recipe_file recipe
    recipe_file="$(dirname "${out}")/.$(basename "${out}").recipe"
    recipe="${dir##*/} ${pkg} ${GO_VERSION} CGO_ENABLED=${CGO_ENABLED} ${GOFLAGS} ${GOEXPERIMENT:-} ${ldflags}"
    if [[ -x "${out}" && -f "${recipe_file}" && "$(cat "${recipe_file}")" == "${recipe}" ]]; then
        log "have $(basename "${out}")"
        return 0
    fi
    log "building $(basename "${out}") ($((SECONDS - start)) s elapsed)"
    (cd "${dir}" && go build -ldflags "-s -w ${ldflags}" -o "${out}.tmp" "${pkg}")
    mv "${out}.tmp" "${out}"
    echo "${recipe}" >"${recipe_file}"
}

# wrapper_module DIR MODULE REQUIREMENT [PACKAGE...]: a throw-away module that requires one module
# ("path version"); a tools.go blank-importing PACKAGEs keeps the requirement (and go.sum) in place
# for `go build -mod=mod`.
wrapper_module() {
    local dir="$1" module="$2" requirement="$3"
    shift 3
    mkdir -p "${dir}"
    printf 'module %s\n\ngo 1.26.0\n\nrequire %s\n' "${module}" "${requirement}" >"${dir}/go.mod"
    if (($# == 1)); then
        printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$1" >"${dir}/tools.go"
    elif (($# > 1)); then
        { printf '//go:build tools\n\npackage tools\n\nimport (\n'; printf '\t_ "%s"\n' "$@"; printf ')\n'; } >"${dir}/tools.go"
    fi
}

# --- etcd: a wrapper main around etcdmain (real etcd flag parsing, built on embed) -----------
etcd_src="${SRC}/etcd-${ETCD_VERSION}"
wrapper_module "${etcd_src}" featx.local/etcd "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
cat >"${etcd_src}/main.go" <<'EOF'
// Command etcd is upstream etcd's main: flags are exactly those etcd accepts (and kwokctl passes).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
build_in "${etcd_src}" "${PARTIAL}/bin/etcd" . \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=featx-${ETCD_VERSION}"

# --- kwok + kwokctl ----------------------------------------------------------------------------
kwok_src="${SRC}/kwok-${KWOK_VERSION}"
wrapper_module "${kwok_src}" featx.local/kwok "sigs.k8s.io/kwok ${KWOK_VERSION}" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
kwok_ld="-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
build_in "${kwok_src}" "${PARTIAL}/bin/kwok" sigs.k8s.io/kwok/cmd/kwok "${kwok_ld}"
build_in "${kwok_src}" "${PARTIAL}/bin/kwokctl" sigs.k8s.io/kwok/cmd/kwokctl "${kwok_ld}"
# kwok's own default Stage manifests, so a harness can configure kwok with a subset of them
# (e.g. without pod-complete, to run pods' commands itself) that matches this kwok version.
kwok_dir="$(cd "${kwok_src}" && go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "${PARTIAL}/stages"
for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
         node/heartbeat/node-heartbeat pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    install -m 0644 "${kwok_dir}/kustomize/stage/${f}.yaml" "${PARTIAL}/stages/"
done

# --- Kubernetes: wrapper module that pins every staging module to the matching v0.x.y ---------
k8s_src="${SRC}/k8s-${K8S_VERSION}"
mkdir -p "${k8s_src}"
k8s_gomod="$(cd "${k8s_src}" && go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[[ -f "${k8s_gomod}" ]] || { log "cannot download k8s.io/kubernetes@${K8S_VERSION}"; exit 1; }
staging_version="v0.${K8S_VERSION#v1.}"
{
    printf 'module featx.local/k8s\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\n' "${K8S_VERSION}"
    # Kubernetes' go.mod: "k8s.io/foo => ./staging/src/k8s.io/foo" -> published k8s.io/foo v0.x.y
    sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*$#\1#p' "${k8s_gomod}" \
        | sort -u | while read -r mod; do
            printf 'replace %s => %s %s\n' "${mod}" "${mod}" "${staging_version}"
        done
} >"${k8s_src}/go.mod"
cat >"${k8s_src}/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
EOF
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
k8s_ld=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ld+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    k8s_ld+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
done
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    build_in "${k8s_src}" "${PARTIAL}/bin/${cmd}" "k8s.io/kubernetes/cmd/${cmd}" "${k8s_ld}"
done

# --- helm ---------------------------------------------------------------------------------------
helm_src="${SRC}/helm-${HELM_VERSION}"
mkdir -p "${HELM_DEST}/bin"
wrapper_module "${helm_src}" featx.local/helm "helm.sh/helm/v3 ${HELM_VERSION}" helm.sh/helm/v3/cmd/helm
helm_ld="-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
# Like helm's Makefile: the default Kubernetes version (helm template, lint) follows its client-go;
# unset, it is v1.20 and charts with kubeVersion constraints fail to render.
helm_gomod="$(cd "${helm_src}" && go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
client_go="$(sed -n 's#^[[:space:]]*k8s\.io/client-go v0\.\([0-9]*\)\..*#\1#p' "${helm_gomod}" | head -n1)"
[[ -n "${client_go}" ]] || { log "cannot find k8s.io/client-go in helm's go.mod"; exit 1; }
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    helm_ld+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${client_go}"
done
build_in "${helm_src}" "${HELM_DEST}/bin/helm" helm.sh/helm/v3/cmd/helm "${helm_ld}"
ln -sfn "${HELM_DEST}/bin/helm" "${PARTIAL}/bin/helm"

# --- the node: containerd, runc, CoreDNS, pause ------------------------------------------------
containerd_src="${SRC}/containerd-${CONTAINERD_VERSION}"
wrapper_module "${containerd_src}" featx.local/containerd "github.com/containerd/containerd/v2 ${CONTAINERD_VERSION}" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
containerd_ld="-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
for cmd in containerd containerd-shim-runc-v2 ctr; do
    GOFLAGS="${GOFLAGS} -tags=no_btrfs,no_devmapper,no_zfs" \
        build_in "${containerd_src}" "${PARTIAL}/bin/${cmd}" "github.com/containerd/containerd/v2/cmd/${cmd}" "${containerd_ld}"
done

runc_src="${SRC}/runc-${RUNC_VERSION}"
wrapper_module "${runc_src}" featx.local/runc "github.com/opencontainers/runc ${RUNC_VERSION}" github.com/opencontainers/runc
# runc needs cgo (nsenter) and libseccomp for the RuntimeDefault profile pods run with.
CGO_ENABLED=1 GOFLAGS="${GOFLAGS} -tags=seccomp" \
    build_in "${runc_src}" "${PARTIAL}/bin/runc" github.com/opencontainers/runc "-X main.version=${RUNC_VERSION#v}"

# CoreDNS with the plugins a test cluster needs (bind, errors, log, kubernetes): a fraction of the
# full build, and no plugin that forwards queries off this machine.
coredns_src="${SRC}/coredns-${COREDNS_VERSION}"
wrapper_module "${coredns_src}" featx.local/coredns "github.com/coredns/coredns ${COREDNS_VERSION}"
cat >"${coredns_src}/main.go" <<'EOF'
// Command coredns is CoreDNS's main with only the plugins featx's test cluster uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
)

func init() {
	dnsserver.Directives = []string{"bind", "errors", "log", "kubernetes"}
}

func main() { coremain.Run() }
EOF
build_in "${coredns_src}" "${PARTIAL}/bin/coredns" .

# pause: the sandbox's one process (sleeps until SIGTERM/SIGINT, reaps orphans), static so that it
# runs in an image FROM scratch. scripts/build-images.sh wraps it into an image.
pause_src="${SRC}/pause"
mkdir -p "${pause_src}"
cat >"${pause_src}/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop}, on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) pause();
}
EOF
pause_recipe="pause.c $(sha256sum "${pause_src}/pause.c" | cut -c1-16) $(cc --version | head -n1)"
if [[ -x "${PARTIAL}/bin/pause" && "$(cat "${PARTIAL}/bin/.pause.recipe" 2>/dev/null)" == "${pause_recipe}" ]]; then
    log "have pause"
else
    cc -static -Os -o "${PARTIAL}/bin/pause.tmp" "${pause_src}/pause.c"
    mv "${PARTIAL}/bin/pause.tmp" "${PARTIAL}/bin/pause"
    echo "${pause_recipe}" >"${PARTIAL}/bin/.pause.recipe"
fi

# --- Kueue: the upstream command and its CRDs (the suite applies them server-side) -------------
kueue_src="${SRC}/kueue-${KUEUE_VERSION}"
mkdir -p "${KUEUE_DEST}/bin"
wrapper_module "${kueue_src}" featx.local/kueue "sigs.k8s.io/kueue ${KUEUE_VERSION}" sigs.k8s.io/kueue/cmd/kueue
build_in "${kueue_src}" "${KUEUE_DEST}/bin/kueue" sigs.k8s.io/kueue/cmd/kueue \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
kueue_dir="$(cd "${kueue_src}" && go mod download -json "sigs.k8s.io/kueue@${KUEUE_VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "${kueue_dir}/config/components/crd/bases" ]] || { log "no CRDs in sigs.k8s.io/kueue@${KUEUE_VERSION}"; exit 1; }
mkdir -p "${KUEUE_DEST}/crds"
install -m 0644 "${kueue_dir}"/config/components/crd/bases/*.yaml "${KUEUE_DEST}/crds/"
ln -sfn "${KUEUE_DEST}/bin/kueue" "${PARTIAL}/bin/kueue"
ln -sfn "${KUEUE_DEST}/crds" "${PARTIAL}/kueue-crds"

# --- publish atomically -------------------------------------------------------------------------
for b in "${BINARIES[@]}"; do
    case "${b}" in
        helm) version_arg="version" ;;
        coredns) version_arg="-version" ;;
        pause|containerd-shim-runc-v2|kueue) continue ;;  # no version flag: pause would sleep; the shim wants a socket; kueue starts
        *) version_arg="--version" ;;
    esac
    "${PARTIAL}/bin/${b}" "${version_arg}" >/dev/null 2>&1 || { log "built ${b} does not run"; exit 1; }
done
echo "${STAMP}" >"${PARTIAL}/VERSIONS"
rm -rf "${DEST}"
mv "${PARTIAL}" "${DEST}"
log "done in $((SECONDS - start)) s"
echo "${BIN_DIR}"
