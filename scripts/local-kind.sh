#!/usr/bin/env bash
# `make local-kind`: the whole featx stack on a local kind cluster, CPU only, in about 10 minutes.
#
#   1. kind create cluster --config k8s/kind-config.yaml            (cluster "featx"; kept if it exists)
#   2. docker build -f docker/Dockerfile.cpu -t featx-cpu:dev .
#   3. kind load docker-image featx-cpu:dev --name featx
#   4. kubectl apply -f k8s/namespace.yaml
#      k8s/seaweedfs-secret.yaml with generated keys (kept if the Secret exists)
#      kubectl apply -f k8s/seaweedfs.yaml; wait for the SeaweedFS rollout
#      kubectl apply -f k8s/seaweedfs-bucket-job.yaml; wait for the Job
#   5. helm upgrade --install featx ./helm/featx -n featx -f k8s/local-values.yaml; wait for the controller
#   6. wait until every model of the smoke modelset is done or failed (featx status in the controller pod)
#   7. print featx status and the next commands
#
# Needs docker (running), kind, kubectl and helm on PATH. Settings (environment):
#   KIND_CLUSTER=featx  KIND_NODE_IMAGE=<kind's default>
#   FEATX_WAIT_S=1800 (how long step 6 may take)  FEATX_POLL_S=10 (between status checks)
#   SKIP_BUILD=1 (reuse an existing featx-cpu:dev)
# Remove everything with `make local-kind-down` (scripts/local-kind-down.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"

CLUSTER="${KIND_CLUSTER:-featx}"
IMAGE=featx-cpu:dev  # also in k8s/local-values.yaml and k8s/seaweedfs-bucket-job.yaml
WAIT_S="${FEATX_WAIT_S:-1800}"
POLL_S="${FEATX_POLL_S:-10}"
NS=featx
RELEASE=featx
CONTEXT="kind-${CLUSTER}"
STORE=s3://featx-features/features
MODELSET=smoke
DATASET=featx-sample

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'local-kind: %s\n' "$*" >&2; exit 1; }
kc() { kubectl --context "${CONTEXT}" -n "${NS}" "$@"; }
# wait_job NAME SECONDS: 0 once the Job is Complete; 1 when it Failed or the time is up.
wait_job() {
    local name=$1 deadline=$((SECONDS + $2)) state
    while ((SECONDS < deadline)); do
        state="$(kc get job "${name}" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}' 2>/dev/null || true)"
        [[ " ${state} " == *" Complete "* ]] && return 0
        [[ " ${state} " == *" Failed "* ]] && return 1
        sleep 2
    done
    return 1
}

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
    log "docker build -f docker/Dockerfile.cpu -t ${IMAGE} ."
    docker build -f docker/Dockerfile.cpu -t "${IMAGE}" .
fi
log "kind load docker-image ${IMAGE} --name ${CLUSTER}"
kind load docker-image "${IMAGE}" --name "${CLUSTER}"

# 4. Namespace, S3 store, bucket
log "kubectl apply -f k8s/namespace.yaml"
kubectl --context "${CONTEXT}" apply -f k8s/namespace.yaml
if kc get secret featx-s3 >/dev/null 2>&1; then
    log "Secret featx-s3 exists: keeping its keys"
else
    log "Secret featx-s3 from k8s/seaweedfs-secret.yaml with generated keys"
    access_key="featx$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    secret_key="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    sed -e "s/@FEATX_S3_ACCESS_KEY@/${access_key}/g" -e "s/@FEATX_S3_SECRET_KEY@/${secret_key}/g" \
        k8s/seaweedfs-secret.yaml | kubectl --context "${CONTEXT}" apply -f -
fi
log "kubectl apply -f k8s/seaweedfs.yaml"
kubectl --context "${CONTEXT}" apply -f k8s/seaweedfs.yaml
kc rollout status deployment/seaweedfs --timeout=300s \
    || die "SeaweedFS did not become ready: kubectl --context ${CONTEXT} -n ${NS} describe pod -l app.kubernetes.io/name=seaweedfs"
log "kubectl apply -f k8s/seaweedfs-bucket-job.yaml"
kc delete job featx-bucket --ignore-not-found --wait=true >/dev/null
kubectl --context "${CONTEXT}" apply -f k8s/seaweedfs-bucket-job.yaml
if ! wait_job featx-bucket 300; then
    kc logs job/featx-bucket --tail=20 >&2 || true
    die "the bucket Job failed (its log is above)"
fi
kc logs job/featx-bucket --tail=1

# 5. featx
log "helm upgrade --install ${RELEASE} ./helm/featx -n ${NS} -f k8s/local-values.yaml"
upgrade=0
helm status "${RELEASE}" --kube-context "${CONTEXT}" -n "${NS}" >/dev/null 2>&1 && upgrade=1
helm upgrade --install "${RELEASE}" ./helm/featx --kube-context "${CONTEXT}" -n "${NS}" \
    -f k8s/local-values.yaml --wait --timeout 5m
if [[ ${upgrade} == 1 ]]; then
    kc rollout restart "deployment/${RELEASE}"  # same image tag, new image: restart the controller on it
fi
kc rollout status "deployment/${RELEASE}" --timeout=300s

# 6. Wait for the Jobs: every model done or failed, no Job pending or running (twice in a row,
#    POLL_S apart, so that a retry the controller is about to create is not missed).
status_cmd=(featx status --store "${STORE}" --modelset "${MODELSET}" --dataset "${DATASET}" --namespace "${NS}" --release "${RELEASE}")
log "waiting up to ${WAIT_S} s for the Jobs (kubectl --context ${CONTEXT} -n ${NS} get jobs -w shows them)"
deadline=$((SECONDS + WAIT_S))
settled=0
while :; do
    summary="$(kc exec "deployment/${RELEASE}" -- "${status_cmd[@]}" 2>/dev/null | tail -n 1 || true)"
    printf '  %s  %s\n' "$(date +%H:%M:%S)" "${summary:-(no status yet)}" >&2
    if [[ "${summary}" == *"done="* && " ${summary} " == *" missing=0 "* \
          && " ${summary} " != *" running="[1-9]* && " ${summary} " != *" pending="[1-9]* ]]; then
        settled=$((settled + 1))
        [[ ${settled} -ge 2 ]] && break
    else
        settled=0
    fi
    if ((SECONDS >= deadline)); then
        log "not finished after ${WAIT_S} s; the cluster is left running"
        break
    fi
    sleep "${POLL_S}"
done

# 7. Status and next steps
log "featx status (run in the controller pod)"
kc exec "deployment/${RELEASE}" -- "${status_cmd[@]}" || true

cat <<NEXT

Next:
  kubectl --context ${CONTEXT} -n ${NS} get jobs -l featx.io/release=${RELEASE} -L featx.io/model,featx.io/attempt,featx.io/gpu-class
  kubectl --context ${CONTEXT} -n ${NS} logs deploy/${RELEASE} -f                      # controller decisions
  kubectl --context ${CONTEXT} -n ${NS} logs -l featx.io/release=${RELEASE},featx.io/model=featx-smoke_gpt2 --tail=20
  kubectl --context ${CONTEXT} -n ${NS} exec deploy/${RELEASE} -- ${status_cmd[*]} --json
  # the features, from your machine:
  kubectl --context ${CONTEXT} -n ${NS} port-forward svc/seaweedfs 8333:8333 &
  export AWS_ENDPOINT_URL=http://127.0.0.1:8333
  export AWS_ACCESS_KEY_ID=\$(kubectl --context ${CONTEXT} -n ${NS} get secret featx-s3 -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)
  export AWS_SECRET_ACCESS_KEY=\$(kubectl --context ${CONTEXT} -n ${NS} get secret featx-s3 -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)
  featx status --store ${STORE} --modelset ${MODELSET} --dataset ${DATASET}
  make local-kind                                                                       # again after a change: rebuilds, reloads, upgrades (cluster and keys kept)
  make local-kind-down                                                                  # delete the cluster
NEXT
