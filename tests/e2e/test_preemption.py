"""Preemption and eviction of a running featx pod on the real node cost no attempt and no
committed shard.

* Kueue (the upstream binary, ``localcluster.kueue``) with a ClusterQueue of one GPU: the chart's
  Jobs (``kueue.queueName``) are admitted one at a time and the other waits; a Job of a higher
  Kueue priority preempts the running featx Job mid-model; its Workload is admitted again once the
  quota is free, and the model ends done.
* The Eviction API on a running featx pod: the Job's ``podFailurePolicy`` ignores the disruption,
  its replacement pod finishes the model.

Both extract row shards (``sharding.rowsPerShard: 16``, 4 shards of featx-sample, one Indexed Job
per model running one pod at a time). To land the disruption mid-model on any machine, the
extraction container of a later shard is frozen (SIGSTOP, through containerd) once the store
holds the first shard, and thawed (SIGCONT) once the kubelet's SIGTERM waits on it: featx then
takes the signal mid-shard. What is asserted comes from the store (the
objects of the shards committed before the disruption are never written again; ``featx status
--verify`` reads every shard back against its manifest's sha256), from the pods' logs (the rerun
skips those shards and commits only the others) and from the Job and Workload status.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from featx.store.keys import MANIFEST_SUFFIX
from localcluster.controlplane import wait_until
from localcluster.kueue import Kueue, start_kueue
from localcluster.node import RealNode
from tests.e2e.conftest import Kubectl, Release, install_release, s3_env

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]

HERE = Path(__file__).parent
BUCKET = "featx-features"
SHARDS = 4  # featx-sample's 64 rows, 16 per shard
SHARDED = {"sharding": {"rowsPerShard": 16, "parallelism": 1}}  # the chart's values
GPU_CLASSES = yaml.safe_load((HERE / "real-node-values.yaml").read_text())["gpuClasses"]


@pytest.fixture(scope="module")
def kueue(local_cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    started = time.monotonic()
    k = start_kueue(local_cluster.cluster, tmp_path_factory.mktemp("kueue"))
    print(f"\n[e2e] kueue ready in {time.monotonic() - started:.0f} s")
    try:
        yield k
    finally:
        k.stop()


# -- the store and the container, watched from the host ------------------------------------------


@dataclass
class Shards:
    """The shard objects of one release's store prefix, read by listing the bucket."""

    kubectl: Kubectl
    prefix: str

    def objects(self) -> dict[str, tuple[str, str]]:
        """key -> (ETag, LastModified) of every shard object (data and manifest)."""
        s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{self.prefix}/"):
            for o in page.get("Contents", []):
                if "/shard-" in o["Key"]:
                    out[o["Key"]] = (o["ETag"], o["LastModified"].isoformat())
        return out

    def committed(self, objects: dict[str, tuple[str, str]] | None = None) -> set[str]:
        """Names (``shard-00003-of-00064``) of the shards that have their manifest."""
        return {k.rsplit("/", 1)[1].removesuffix(MANIFEST_SUFFIX)
                for k in (self.objects() if objects is None else objects) if k.endswith(MANIFEST_SUFFIX)}

    def __post_init__(self) -> None:
        self.env = s3_env(self.kubectl)


def running_extract(node: RealNode, namespace: str) -> dict[str, tuple[str, int]]:
    """pod name -> (containerd id, host pid) of each running featx extraction container in ``namespace``."""
    rows = node.ctr("tasks", "ls", timeout=30).stdout.decode().splitlines()[1:]
    out = {}
    for cid, pid in ((cols[0], int(cols[1])) for cols in map(str.split, rows) if cols[-1:] == ["RUNNING"]):
        labels = json.loads(node.ctr("containers", "info", cid, timeout=30).stdout)["Labels"]
        if labels.get("io.kubernetes.pod.namespace") == namespace and labels.get("io.kubernetes.container.name") == "extract":
            out[labels["io.kubernetes.pod.name"]] = (cid, pid)
    return out


def _sigterm_in(pid: int, *masks: str) -> bool:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return any(int(fields[m], 16) & (1 << (signal.SIGTERM - 1)) for m in masks)


def sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits on process ``pid`` (stopped, it cannot take it yet)."""
    return _sigterm_in(pid, "ShdPnd", "SigPnd")


def sigterm_caught(pid: int) -> bool:
    """Whether process ``pid`` handles SIGTERM: featx's main has started (``featx.signals``)."""
    try:
        return _sigterm_in(pid, "SigCgt")
    except FileNotFoundError:
        return False


@dataclass
class Frozen:
    pod: str
    container: str
    pid: int
    committed: set[str]  # shards in the store while it was frozen


def freeze_after_first_shard(node: RealNode, namespace: str, shards: Shards) -> Frozen:
    """SIGSTOP the extraction container that starts in ``namespace`` after its first shard is
    committed (the pod of a later shard, before it commits), once featx runs in it (frozen before
    that, the kubelet's SIGTERM would kill it at once, not featx stop)."""
    seen: set[str] = set()

    def first_committed() -> set[str]:
        seen.update(cid for cid, _ in running_extract(node, namespace).values())
        return shards.committed()

    wait_until(first_committed, 600, f"a first shard in {namespace}", interval=0.2)
    (pod, (cid, pid)), = wait_until(
        lambda: [(p, c) for p, c in running_extract(node, namespace).items() if c[0] not in seen and sigterm_caught(c[1])], 300,
        f"the extraction container of a later shard in {namespace}", interval=0.05)
    node.ctr("tasks", "kill", "-s", "SIGSTOP", cid, timeout=30)
    committed = shards.committed()
    assert len(committed) < SHARDS, f"all {SHARDS} shards were committed before {pod} could be frozen"
    return Frozen(pod, cid, pid, committed)


def pod_json(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    out = kubectl("-n", namespace, "get", "pod", name, "--ignore-not-found", "-o", "json")
    return json.loads(out) if out.strip() else None


def thaw_once_deleted(kubectl: Kubectl, node: RealNode, namespace: str, frozen: Frozen) -> dict[str, Any]:
    """SIGCONT the frozen container once its pod is being deleted and the kubelet's SIGTERM waits on
    it (so featx takes the signal first thing, mid-shard), wait until the pod is gone; the pod as
    seen while it was being deleted."""
    def deleting() -> dict[str, Any] | None:
        pod = pod_json(kubectl, namespace, frozen.pod)
        assert pod is not None, f"pod {frozen.pod} went before it was seen being deleted"
        return pod if pod["metadata"].get("deletionTimestamp") else None

    pod = wait_until(deleting, 120, f"pod {frozen.pod} to be deleted", interval=0.5)
    wait_until(lambda: sigterm_pending(frozen.pid), 60, f"the kubelet's SIGTERM to {frozen.pod}", interval=0.1)
    node.ctr("tasks", "kill", "-s", "SIGCONT", frozen.container, timeout=30)
    wait_until(lambda: pod_json(kubectl, namespace, frozen.pod) is None, 120, f"pod {frozen.pod} to go", interval=0.5)
    return pod


def events(log: str, event: str) -> list[dict[str, Any]]:
    """featx's JSON log events of one kind in a pod's log."""
    out = []
    for line in log.splitlines():
        if line.startswith("{") and f'"event": "{event}"' in line:
            out.append(json.loads(line))
    return out


def committed_shards(log: str) -> set[str]:
    """``shard-NNNNN-of-MMMMM`` of each shard a pod's log says it committed."""
    names = set()
    for e in events(log, "committed"):
        if "shard" in e:
            index, total = (int(x) for x in e["shard"].split("/"))
            names.add(f"shard-{index - 1:05d}-of-{total:05d}")
    return names


def verify(rel: Release) -> dict[str, tuple[str, str | None]]:
    """``featx status --verify`` in the controller's pod: every shard read back against its sha256."""
    out = rel.kubectl("-n", rel.namespace, "exec", "deploy/featx", "--", "featx", "status", "--verify", "--json",
                      "--store", f"s3://{BUCKET}/{rel.prefix}", "--models", *rel.models, "--dataset", "featx-sample",
                      timeout=300)
    return {r["id"]: (r["state"], r["shards"]) for r in json.loads(out)}


def model_of(obj: dict[str, Any]) -> str | None:
    """The model id of a featx Job or pod (its annotation); None for another one."""
    return (obj["metadata"].get("annotations") or {}).get("featx.io/model-id")


def the_job(rel: Release, model: str) -> dict[str, Any]:
    """The one Job of a model (one attempt: no second one was ever created)."""
    jobs = [j for j in rel.jobs() if model_of(j) == model]
    assert [j["metadata"]["labels"]["featx.io/attempt"] for j in jobs] == ["1"], [j["metadata"]["name"] for j in jobs]
    return jobs[0]


def assert_cost_nothing(rel: Release, model: str, frozen: Frozen, before: dict[str, tuple[str, str]],
                        after: dict[str, tuple[str, str]]) -> None:
    """The disrupted model: one attempt, no failure counted, the shards committed before the
    disruption untouched and not extracted again, every shard verified."""
    def finished() -> dict[str, Any] | None:
        job = the_job(rel, model)
        return job if {c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"} & \
            {"Complete", "Failed"} else None

    job = wait_until(finished, 120, f"the Job of {model} to finish", interval=1)
    print(f"\n[e2e] {model}: Job status {json.dumps(job['status'])}")
    assert {c["type"] for c in job["status"]["conditions"] if c["status"] == "True"} == {"SuccessCriteriaMet", "Complete"}
    assert not job["status"].get("failed"), job["status"]
    (row,) = [r for r in rel.status() if r["id"] == model]
    assert (row["state"], row["attempts"]) == ("done", 1), row  # attempt 1 only, no failure record
    assert verify(rel)[model] == ("done", f"{SHARDS}/{SHARDS}")
    # the objects of the shards committed before the disruption were never written again
    kept = {k: v for k, v in before.items() if k.rsplit("/", 1)[1].split(".")[0] in frozen.committed}
    assert kept and all(after[k] == v for k, v in kept.items())
    # each shard was extracted once: the succeeded pods' commits are disjoint and cover every shard
    rel.pods.poll()  # the last pod ends after its model is done, when the recorder may have stopped
    pods = [p for p in rel.pods.pods.values() if model_of(p) == model and p["status"].get("phase") == "Succeeded"]
    by_pod = {p["metadata"]["name"]: committed_shards(rel.pods.logs[p["metadata"]["name"]]) for p in pods}
    # (a frozen pod whose signal came inside its commit's publish section finishes that commit first)
    assert sum(len(v) for v in by_pod.values()) == SHARDS and len(set().union(*by_pod.values())) == SHARDS, by_pod
    print(f"[e2e] {model}: {len(frozen.committed)} shards committed when frozen; commits by pod: {by_pod}")


# -- Kueue ---------------------------------------------------------------------------------------

FLAVOR = "featx-gpu"
CLUSTER_QUEUE = "featx-one-gpu"
QUEUE = "featx"


def kueue_objects(namespace: str) -> list[dict[str, Any]]:
    """A ResourceFlavor, a ClusterQueue of one GPU that preempts lower priorities, a LocalQueue and
    two WorkloadPriorityClasses: featx's (``kueue.priorityClassName``) and one above it for urgent work."""
    quota = [{"name": "cpu", "nominalQuota": "16"}, {"name": "memory", "nominalQuota": "64Gi"},
             {"name": "nvidia.com/gpu", "nominalQuota": "1"}]
    return [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
         "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": [q["name"] for q in quota],
                                      "flavors": [{"name": FLAVOR, "resources": quota}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": namespace},
         "spec": {"clusterQueue": CLUSTER_QUEUE}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": "featx-batch"},
         "value": 100, "description": "featx extraction: preemptible by urgent work"},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass", "metadata": {"name": "featx-urgent"},
         "value": 1000, "description": "work that may preempt featx extraction"},
    ]


def urgent_job(namespace: str) -> dict[str, Any]:
    """A Job of the urgent WorkloadPriorityClass that needs the queue's one GPU for a few seconds."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "urgent", "namespace": namespace,
                     "labels": {"kueue.x-k8s.io/queue-name": QUEUE, "kueue.x-k8s.io/priority-class": "featx-urgent"}},
        "spec": {"suspend": True, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "urgent", "image": "featx-cpu:dev", "imagePullPolicy": "Never",
                "command": ["python", "-c", "import time; time.sleep(5)"],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True},
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": "1"},
                              "limits": {"memory": "256Mi", "nvidia.com/gpu": "1"}},
            }],
        }}},
    }


def workloads(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    """Kueue's Workloads of a namespace by the name of the Job that owns each."""
    items = kubectl.json("-n", namespace, "get", "workloads.kueue.x-k8s.io")["items"]
    return {w["metadata"]["ownerReferences"][0]["name"]: w for w in items}


def condition(workload: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in workload.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def workload_events(kubectl: Kubectl, namespace: str, workload: str) -> dict[str, int]:
    """How often Kueue reported each reason on a Workload (a repeated Event is one object with a count)."""
    items = kubectl.json("-n", namespace, "get", "events", "--field-selector",
                         f"involvedObject.kind=Workload,involvedObject.name={workload}")["items"]
    counts: dict[str, int] = {}
    for e in items:
        counts[e["reason"]] = counts.get(e["reason"], 0) + (e.get("count") or (e.get("series") or {}).get("count") or 1)
    return counts


def test_kueue_admits_within_quota_and_preemption_costs_no_attempt_and_no_shard(
        kubectl, deployed, local_cluster, kueue, tmp_path):
    ns = "featx-kueue"
    models = ["featx-smoke/gpt2", "featx-smoke/opt"]
    cluster_wide = [d for d in kueue_objects(ns) if d["kind"] != "LocalQueue"]
    for doc in cluster_wide:
        kubectl("apply", "-f", "-", stdin=json.dumps(doc))
    started = time.monotonic()
    rel = install_release(kubectl, ns, models, {
        "gpuClasses": GPU_CLASSES, "concurrency": 2, "kueue": {"queueName": QUEUE, "priorityClassName": "featx-batch"},
        **SHARDED}, tmp_path)
    for doc in kueue_objects(ns):  # the namespace exists now; its Jobs wait for the LocalQueue
        if doc not in cluster_wide:
            kubectl("apply", "-f", "-", stdin=json.dumps(doc))
    shards = Shards(kubectl, rel.prefix)
    with rel.pods:
        frozen = freeze_after_first_shard(local_cluster.node, ns, shards)
        # within the quota one Job is admitted (unsuspended), beyond it the other waits suspended
        first = model_of(pod_json(kubectl, ns, frozen.pod))
        (other,) = [m for m in models if m != first]
        jobs = {model_of(j): j for j in rel.jobs() if model_of(j)}
        assert jobs[first]["spec"]["suspend"] is False and jobs[other]["spec"]["suspend"] is True
        wl = workloads(kubectl, ns)
        first_wl, other_wl = wl[jobs[first]["metadata"]["name"]], wl[jobs[other]["metadata"]["name"]]
        assert condition(first_wl, "Admitted").get("status") == "True"
        assert condition(other_wl, "QuotaReserved").get("status") != "True", other_wl.get("status")
        assert first_wl["spec"]["priority"] == 100, first_wl["spec"]  # its WorkloadPriorityClass
        before = shards.objects()

        kubectl("apply", "-f", "-", stdin=json.dumps(urgent_job(ns)))
        thaw_once_deleted(kubectl, local_cluster.node, ns, frozen)
        preempted = workloads(kubectl, ns)[jobs[first]["metadata"]["name"]]
        assert condition(preempted, "Evicted").get("reason") == "Preempted", preempted["status"]
        rel.wait(lambda s: s == {m: "done" for m in models}, 900, "both models done after the preemption")
    after = shards.objects()
    print(f"\n[e2e] kueue: two models through one GPU, one preempted, in {time.monotonic() - started:.0f} s")

    urgent = kubectl.json("-n", ns, "get", "job", "urgent")
    assert urgent["status"].get("succeeded") == 1
    # the preempted Workload was admitted again later, and finished
    reasons = workload_events(kubectl, ns, preempted["metadata"]["name"])
    assert (reasons.get("Preempted"), reasons.get("Admitted")) == (1, 2), reasons
    assert condition(workloads(kubectl, ns)[jobs[first]["metadata"]["name"]], "Finished").get("status") == "True"
    first_stem = jobs[first]["metadata"]["annotations"]["featx.io/stem"]
    assert_cost_nothing(rel, first, frozen, {k: v for k, v in before.items() if f"/{first_stem}/" in k},
                        after)
    assert verify(rel)[other] == ("done", f"{SHARDS}/{SHARDS}")


# -- the Eviction API ----------------------------------------------------------------------------


def test_a_pod_evicted_mid_shard_costs_no_attempt_and_no_shard(kubectl, deployed, local_cluster, tmp_path):
    ns = "featx-evict"
    model = "featx-smoke/gpt2"
    rel = install_release(kubectl, ns, [model], {"gpuClasses": GPU_CLASSES, **SHARDED}, tmp_path)
    shards = Shards(kubectl, rel.prefix)
    with rel.pods:
        frozen = freeze_after_first_shard(local_cluster.node, ns, shards)
        before = shards.objects()
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": frozen.pod, "namespace": ns}}
        kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{frozen.pod}/eviction", "-f", "-",
                stdin=json.dumps(eviction))
        evicted = thaw_once_deleted(kubectl, local_cluster.node, ns, frozen)
        rel.wait(lambda s: s == {model: "done"}, 600, f"{model} done after the eviction")
    after = shards.objects()
    disruption = [c for c in evicted["status"].get("conditions", []) if c["type"] == "DisruptionTarget"]
    assert disruption and disruption[0]["reason"] == "EvictionByEvictionAPI", evicted["status"]
    assert_cost_nothing(rel, model, frozen, before, after)
