#!/usr/bin/env bash
# The featx stack on a cluster that exists and holds the image featx-cpu:dev: the part of
# `make local-kind` (kind) and `make local-cluster` (a real node beside a local control plane) after
# "the cluster exists and the image is loaded"; the end-to-end tests run exactly this script.
#
#   1. kubectl apply -f k8s/namespace.yaml                       (Pod Security "restricted", enforced)
#      k8s/seaweedfs-secret.yaml with generated keys              (kept if the Secret exists)
#      kubectl apply -f k8s/seaweedfs.yaml; wait for the SeaweedFS rollout
#      kubectl apply -f k8s/seaweedfs-bucket-job.yaml; wait for the Job
#   2. helm upgrade --install featx ./helm/featx -n featx -f k8s/local-values.yaml [FEATX_VALUES...]
#   3. wait until every model of the smoke modelset is done or failed (featx status in the controller pod)
#   4. print featx status and the next commands
#
# Exit status: 0 when every model is done; 1 when a step failed, a model failed, or the run did not
# finish in time (the cluster is left as it is, for `kubectl logs`).
# Needs kubectl and helm on PATH. Settings (environment):
#   KUBE_CONTEXT (default: the current context of KUBECONFIG)
#   FEATX_VALUES  extra values files for helm, space-separated (e.g. a real node's GPU classes)
#   FEATX_WAIT_S=1800 (how long step 3 may take)  FEATX_POLL_S=10 (between status checks)
#   FEATX_DOWN_HINT  the command that removes the cluster (printed at the end)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"

WAIT_S="${FEATX_WAIT_S:-1800}"
POLL_S="${FEATX_POLL_S:-10}"
NS=featx
RELEASE=featx
STORE=s3://featx-features/features
MODELSET=smoke
DATASET=featx-sample
context_args=()
[[ -n "${KUBE_CONTEXT:-}" ]] && context_args=(--context "${KUBE_CONTEXT}")

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'local-deploy: %s\n' "$*" >&2; exit 1; }
k() { kubectl ${context_args[@]+"${context_args[@]}"} "$@"; }
h() { helm "$@" ${KUBE_CONTEXT:+--kube-context "${KUBE_CONTEXT}"}; }
kc() { k -n "${NS}" "$@"; }
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

for tool in kubectl helm; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found on PATH; make install puts it in .venv/bin"
done
k version >/dev/null 2>&1 || die "the cluster does not answer (kubectl ${context_args[*]} version); is it running?"

# 1. Namespace, S3 store, bucket
log "kubectl apply -f k8s/namespace.yaml"
k apply -f k8s/namespace.yaml
if kc get secret featx-s3 >/dev/null 2>&1; then
    log "Secret featx-s3 exists: keeping its keys"
else
    log "Secret featx-s3 from k8s/seaweedfs-secret.yaml with generated keys"
    access_key="featx$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    secret_key="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
    sed -e "s/@FEATX_S3_ACCESS_KEY@/${access_key}/g" -e "s/@FEATX_S3_SECRET_KEY@/${secret_key}/g" \
        k8s/seaweedfs-secret.yaml | k apply -f -
fi
log "kubectl apply -f k8s/seaweedfs.yaml"
k apply -f k8s/seaweedfs.yaml
kc rollout status deployment/seaweedfs --timeout=300s \
    || die "SeaweedFS did not become ready: kubectl -n ${NS} describe pod -l app.kubernetes.io/name=seaweedfs"
log "kubectl apply -f k8s/seaweedfs-bucket-job.yaml"
kc delete job featx-bucket --ignore-not-found --wait=true >/dev/null
k apply -f k8s/seaweedfs-bucket-job.yaml
if ! wait_job featx-bucket 300; then
    kc logs job/featx-bucket --tail=20 >&2 || true
    die "the bucket Job failed (its log is above)"
fi
kc logs job/featx-bucket --tail=1

# 2. featx
values=(-f k8s/local-values.yaml)
for f in ${FEATX_VALUES:-}; do values+=(-f "${f}"); done
log "helm upgrade --install ${RELEASE} ./helm/featx -n ${NS} ${values[*]}"
upgrade=0
h status "${RELEASE}" -n "${NS}" >/dev/null 2>&1 && upgrade=1
h upgrade --install "${RELEASE}" ./helm/featx -n "${NS}" "${values[@]}" --wait --timeout 5m || die "helm upgrade --install failed: kubectl -n ${NS} describe deploy/${RELEASE}"
if [[ ${upgrade} == 1 ]]; then
    kc rollout restart "deployment/${RELEASE}"  # same image tag, new image: restart the controller on it
fi
kc rollout status "deployment/${RELEASE}" --timeout=300s \
    || die "the controller did not become ready: kubectl -n ${NS} logs deploy/${RELEASE}"

# 3. Wait for the Jobs: every model done or failed, no Job pending or running (twice in a row,
#    POLL_S apart, so that a retry the controller is about to create is not missed).
status_cmd=(featx status --store "${STORE}" --modelset "${MODELSET}" --dataset "${DATASET}" --namespace "${NS}" --release "${RELEASE}")
log "waiting up to ${WAIT_S} s for the Jobs (kubectl -n ${NS} get jobs -w shows them)"
deadline=$((SECONDS + WAIT_S))
settled=0
finished=0
while :; do
    summary="$(kc exec "deployment/${RELEASE}" -- "${status_cmd[@]}" 2>/dev/null | tail -n 1 || true)"
    printf '  %s  %s\n' "$(date +%H:%M:%S)" "${summary:-(no status yet)}" >&2
    if [[ "${summary}" == *"done="* && " ${summary} " == *" missing=0 "* \
          && " ${summary} " != *" running="[1-9]* && " ${summary} " != *" pending="[1-9]* ]]; then
        settled=$((settled + 1))
        if [[ ${settled} -ge 2 ]]; then finished=1; break; fi
    else
        settled=0
    fi
    if ((SECONDS >= deadline)); then
        log "not finished after ${WAIT_S} s; the cluster is left running"
        break
    fi
    sleep "${POLL_S}"
done

# 4. Status and next steps
log "featx status (run in the controller pod)"
status_rc=0
final="$(kc exec "deployment/${RELEASE}" -- "${status_cmd[@]}")" || status_rc=$?
printf '%s\n' "${final}"

cat <<NEXT

Next:${KUBECONFIG:+
  export KUBECONFIG=${KUBECONFIG}}${KUBE_CONTEXT:+
  kubectl config use-context ${KUBE_CONTEXT}}
  kubectl -n ${NS} get jobs -l featx.io/release=${RELEASE} -L featx.io/model,featx.io/attempt,featx.io/gpu-class
  kubectl -n ${NS} logs deploy/${RELEASE} -f                      # controller decisions
  kubectl -n ${NS} logs -l featx.io/release=${RELEASE},featx.io/model=featx-smoke_gpt2 --tail=20   # kept for job.ttlSecondsAfterFinished
  kubectl -n ${NS} exec deploy/${RELEASE} -- ${status_cmd[*]} --json
  # the features, from your machine:
  kubectl -n ${NS} port-forward svc/seaweedfs 8333:8333 &
  export AWS_ENDPOINT_URL=http://127.0.0.1:8333
  export AWS_ACCESS_KEY_ID=\$(kubectl -n ${NS} get secret featx-s3 -o jsonpath='{.data.AWS_ACCESS_KEY_ID}' | base64 -d)
  export AWS_SECRET_ACCESS_KEY=\$(kubectl -n ${NS} get secret featx-s3 -o jsonpath='{.data.AWS_SECRET_ACCESS_KEY}' | base64 -d)
  featx status --store ${STORE} --modelset ${MODELSET} --dataset ${DATASET}
  ${FEATX_DOWN_HINT:-}
NEXT

((status_rc == 0)) || die "featx status failed in the controller pod (exit ${status_rc}): kubectl -n ${NS} logs deploy/${RELEASE}"
((finished == 1)) || die "not finished after ${WAIT_S} s: kubectl -n ${NS} get jobs; kubectl -n ${NS} logs deploy/${RELEASE}"
last="$(printf '%s\n' "${final}" | tail -n 1)"
[[ " ${last} " == *" failed=0 "* && " ${last} " == *" corrupt=0 "* ]] \
    || die "not every model is done (${last}): featx status above shows which and why"
exit 0
