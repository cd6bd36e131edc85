"""The chart and the reconciler against a real control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler; kwok fake GPU nodes) and a real SeaweedFS.

What is real: the API server (schema of Jobs, 409 on duplicate names), the Job controller
(podFailurePolicy, backoffLimit 0, Complete/Failed conditions), the scheduler (extended GPU
resources, node affinity on nvidia.com/gpu.memory), helm install/upgrade, S3 commits.
What is simulated: nodes and kubelets. kwok marks pods Running on fake GPU nodes; the test
harness's PodRunner runs each pod's command (``featx extract ...``) as a local process with the
pod's environment (Secrets resolved) and reports its exit code through pods/status.

The controller Deployment is installed with 0 replicas (there is no image to run); the tests run
reconcile passes from this process (and, for the race, as two ``featx reconcile`` processes)
with the ConfigMap the chart installed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from featx.catalog import load_modelset
from featx.kube.client import KubeClient
from featx.kube.config import RunConfig
from featx.kube.controller import Controller, PassResult
from featx.kube.events import REPORTING_CONTROLLER
from featx.logs import EventLog
from featx.store import open_store
from localcluster.controlplane import wait_until
from tests.cluster.fixtures import gpu_nodes, k8s_api, k8s_namespace, pod_runner_factory  # noqa: F401
from tests.test_kube_chart import CHART_DIR, find_helm

pytestmark = [pytest.mark.k8s, pytest.mark.s3]

FEATX = str(Path(sys.executable).with_name("featx"))
RELEASE = "rel"
CONFIGMAP = f"{RELEASE}-featx-run"
SMOKE_LM = ["featx-smoke/gpt2", "featx-smoke/llama", "featx-smoke/opt", "featx-smoke/bloom", "featx-smoke/olmo",
            "featx-smoke/pythia"]

# A stand-in for the image's entrypoint: inject one failure on attempt 1, else run the real featx.
WRAPPER = """
import os, sys
mode, featx, args = sys.argv[1], sys.argv[2], sys.argv[3:]
attempt = args[args.index("--attempt") + 1] if "--attempt" in args else "1"
if attempt == "1" and mode in ("transient", "oom"):
    print(f"injected {mode} failure on attempt 1", flush=True)
    sys.exit({"transient": 1, "oom": 4}[mode])
os.execv(featx, [featx, *args])
"""

JOB = {"env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "FEATX_NUM_WORKERS", "value": "0"}],
       "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
       "activeDeadlineSeconds": 900}


def featx_map(argv: list[str]) -> list[str]:
    return [FEATX, *argv[1:]] if argv and argv[0] == "featx" else argv


def wrapper_map(tmp_path: Path, mode: str) -> Callable[[list[str]], list[str]]:
    script = tmp_path / "entrypoint.py"
    script.write_text(WRAPPER)
    return lambda argv: [sys.executable, str(script), mode, FEATX, *argv[1:]]


@dataclass
class Release:
    """One helm release of the chart in a test namespace, and reconcile passes over it."""

    cluster: Any
    api: Any
    namespace: str
    helm: str
    values: Path
    log: io.StringIO

    def helm_run(self, verb: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([self.helm, verb, RELEASE, str(CHART_DIR), "--namespace", self.namespace,
                              "--kubeconfig", str(self.cluster.kubeconfig), "-f", str(self.values), *args],
                             capture_output=True, text=True, timeout=120)
        if check:
            assert out.returncode == 0, out.stderr
        return out

    def kube(self) -> KubeClient:
        return KubeClient(self.api, self.namespace)

    def config(self) -> RunConfig:
        return RunConfig.from_dict(yaml.safe_load(self.kube().read_run_config(CONFIGMAP)))

    def controller(self) -> Controller:
        config = self.config()
        return Controller(config, self.kube(), open_store(config.store), EventLog("json", self.log))

    def reconcile(self) -> PassResult:
        result = self.controller().run_once()
        assert not result.errors, result.errors
        return result

    def jobs(self) -> list[dict[str, Any]]:
        return self.kube().list_jobs(f"featx.io/release={RELEASE}")

    def states(self) -> dict[str, str]:
        controller = self.controller()
        scan = controller.store.scan(controller.config.scan_prefix)
        return {d.id: (scan[d.stem].state if d.stem in scan else "missing") for d in controller.desired}

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in self.log.getvalue().splitlines() if x.strip()]
        return [e for e in lines if kind is None or e["event"] == kind]

    def k8s_events(self, job: str) -> list[tuple[str, str, str]]:
        """(reason, type, message) of featx's Events on Job ``job`` as `kubectl describe job` finds
        them (core/v1, by the involved object's name and uid; not the Job controller's own)."""
        from kubernetes import client

        uid = client.BatchV1Api(self.api).read_namespaced_job(job, self.namespace).metadata.uid
        items = client.CoreV1Api(self.api).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={job},involvedObject.uid={uid}").items
        ours = [e for e in items if e.reporting_component == REPORTING_CONTROLLER]
        return [(e.reason, e.type, e.message) for e in sorted(ours, key=lambda e: e.event_time)]

    def reconcile_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        def step() -> bool:
            self.reconcile()
            return predicate()
        wait_until(step, timeout, what, interval=1.0)


@pytest.fixture
def release_factory(k8s_cluster, k8s_api, gpu_nodes, k8s_namespace, seaweedfs, tmp_path, monkeypatch):  # noqa: F811
    """``make(**values) -> Release``: helm-installs the chart into the test's namespace with a
    Secret holding SeaweedFS's keys, the store under a prefix of its own, tiny extraction
    settings and no controller replica."""
    from kubernetes import client

    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    client.CoreV1Api(k8s_api).create_namespaced_secret(k8s_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="featx-s3"),
        string_data={"AWS_ACCESS_KEY_ID": seaweedfs.access_key, "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key}))
    helm = find_helm()

    def make(install: bool = True, **overrides: Any) -> Release:
        values = {
            "dataset": "featx-sample", "subset": None, "numSamples": 4, "batchSize": 4,
            "s3": {"bucket": seaweedfs.bucket, "prefix": k8s_namespace, "endpoint": seaweedfs.endpoint},
            "modelCache": {"mountPath": str(tmp_path / "cache")},
            "concurrency": 3, "attempts": 3, "controller": {"replicas": 0},
            "job": {**JOB, **overrides.pop("job", {})},
            **overrides,
        }
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        rel = Release(k8s_cluster, k8s_api, k8s_namespace, helm, path, io.StringIO())
        if install:
            out = rel.helm_run("install", "--wait", "--timeout", "60s")
            notes = out.stdout  # NOTES.txt: runnable next commands
            assert f"kubectl -n {k8s_namespace} get jobs -l featx.io/release={RELEASE}" in notes
            assert f"--dataset featx-sample --namespace {k8s_namespace} --release {RELEASE}" in notes
        return rel

    return make


def gpu_request(job: dict[str, Any]) -> dict[str, str]:
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    return {k: v for k, v in res["limits"].items() if k.startswith("nvidia.com/")}


def memory_floor(job: dict[str, Any]) -> int:
    term = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term["key"] == "nvidia.com/gpu.memory" and term["operator"] == "Gt"
    return int(term["values"][0])


def active(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [j for j in jobs if not any(c["type"] in ("Complete", "Failed") and c["status"] == "True"
                                       for c in (j.get("status") or {}).get("conditions") or [])]


@pytest.mark.slow
def test_smoke_modelset_end_to_end(release_factory, pod_runner_factory):  # noqa: F811
    rel = release_factory(modelset="smoke", job={"ttlSecondsAfterFinished": 0})  # the controller deletes them
    first = rel.reconcile()
    assert first.created == 3  # the concurrency limit
    runner = pod_runner_factory(rel.namespace, command_map=featx_map)
    seen: dict[str, dict[str, Any]] = {}

    def all_done() -> bool:
        jobs = rel.jobs()
        assert len(active(jobs)) <= 3
        seen.update({j["metadata"]["name"]: j for j in jobs})
        return set(rel.states().values()) == {"done"}

    rel.reconcile_until(all_done, 900, "every smoke model committed")
    desired = [d.id for d in rel.controller().desired]
    assert len(desired) == len(load_modelset("smoke").models)
    by_model = {j["metadata"]["annotations"]["featx.io/model-id"]: j for j in seen.values()}
    assert sorted(by_model) == sorted(desired)  # one Job per model (no retries needed)
    assert all(j["metadata"]["labels"]["featx.io/attempt"] == "1" for j in seen.values())
    for job in seen.values():
        assert gpu_request(job) == {"nvidia.com/gpu": "1"} and memory_floor(job) == 23033
        assert job["spec"]["backoffLimit"] == 0
    assert not runner.errors

    again = rel.reconcile()  # nothing left to do
    assert again.created == 0 and again.summary().get("skip_done") == len(desired)
    # the last Jobs finish just after their commit; later passes delete every finished Job
    rel.reconcile_until(lambda: not rel.jobs(), 120, "finished Jobs of committed models deleted")
    assert sum(e["event"] == "create" for e in rel.events()) == len(desired)

    out = subprocess.run([FEATX, "status", "--store", rel.config().store, "--modelset", "smoke", "--dataset",
                          "featx-sample", "--num_samples", "4", "--namespace", rel.namespace, "--release", RELEASE,
                          "--kubeconfig", str(rel.cluster.kubeconfig), "--json"],
                         capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert {r["state"] for r in json.loads(out.stdout)} == {"done"}


def test_big_model_gets_two_80gb_gpus_and_is_scheduled_there(release_factory):
    rel = release_factory(modelset=["meta-llama/Llama-2-70b-hf", "gpt2"])
    assert rel.reconcile().created == 2
    jobs = {j["metadata"]["annotations"]["featx.io/model-id"]: j for j in rel.jobs()}
    llama = jobs["meta-llama/Llama-2-70b-hf"]
    assert gpu_request(llama) == {"nvidia.com/gpu": "2"} and memory_floor(llama) == 81558
    assert llama["metadata"]["labels"]["featx.io/gpu-class"] == "h100-80gb"
    from kubernetes import client

    core = client.CoreV1Api(rel.api)

    def node_of(job_name: str) -> str | None:
        pods = core.list_namespaced_pod(rel.namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}").items
        return pods[0].spec.node_name if pods and pods[0].spec.node_name else None

    node = wait_until(lambda: node_of(llama["metadata"]["name"]), 60, "the 70B pod to be scheduled")
    labels = core.read_node(node).metadata.labels
    assert int(labels["nvidia.com/gpu.memory"]) > 81558 and int(labels["nvidia.com/gpu.count"]) >= 2


def test_a_mig_class_requests_its_slice_and_lands_on_the_mig_node(release_factory):
    mig = {"name": "mig-3g.40gb", "enabled": True, "memoryMiB": 40192, "resource": "nvidia.com/mig-3g.40gb",
           "maxPerNode": 1, "memoryLabel": "nvidia.com/mig-3g.40gb.memory", "nodeSelector": {}, "tolerations": []}
    big = {"name": "h100-80gb", "enabled": True, "memoryMiB": 81559, "resource": "nvidia.com/gpu", "maxPerNode": 8,
           "memoryLabel": "nvidia.com/gpu.memory", "nodeSelector": {}, "tolerations": []}
    rel = release_factory(modelset=["gpt2"], gpuClasses=[mig, big])
    assert rel.reconcile().created == 1
    (job,) = rel.jobs()
    assert gpu_request(job) == {"nvidia.com/mig-3g.40gb": "1"}
    term = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert term == {"key": "nvidia.com/mig-3g.40gb.memory", "operator": "Gt", "values": ["40191"]}
    from kubernetes import client

    core = client.CoreV1Api(rel.api)

    def node() -> str | None:
        pods = core.list_namespaced_pod(rel.namespace).items
        return pods[0].spec.node_name if pods and pods[0].spec.node_name else None

    assert "mig" in wait_until(node, 60, "the MIG pod to be scheduled")


def test_transient_failure_is_retried_and_ends_done(release_factory, pod_runner_factory, tmp_path):  # noqa: F811
    rel = release_factory(modelset=["featx-smoke/gpt2"])
    pod_runner_factory(rel.namespace, command_map=wrapper_map(tmp_path, "transient"))
    rel.reconcile_until(lambda: rel.states() == {"featx-smoke/gpt2": "done"}, 300, "gpt2 committed")
    retries = rel.events("retry")
    assert len(retries) == 1 and retries[0]["attempt"] == 2 and "exit code 1" in retries[0]["reason"]
    assert retries[0]["gpu_class"] == "l4-24gb"
    # finished Jobs stay for the chart's default TTL (Kubernetes removes them): logs stay readable
    for _ in range(2):
        rel.reconcile()
    jobs = rel.jobs()
    assert sorted(j["metadata"]["labels"]["featx.io/attempt"] for j in jobs) == ["1", "2"]
    assert {j["spec"]["ttlSecondsAfterFinished"] for j in jobs} == {3600}
    assert not rel.events("delete")


def test_kubernetes_removes_finished_jobs_after_their_ttl(release_factory, pod_runner_factory):  # noqa: F811
    rel = release_factory(modelset=["featx-smoke/gpt2"], job={"ttlSecondsAfterFinished": 2})
    pod_runner_factory(rel.namespace, command_map=featx_map)
    rel.reconcile_until(lambda: rel.states() == {"featx-smoke/gpt2": "done"}, 300, "gpt2 committed")
    wait_until(lambda: not rel.jobs(), 120, "the TTL controller to remove the finished Job")
    assert not rel.events("delete")  # Kubernetes did, not featx


def test_out_of_memory_retries_on_the_next_larger_class(release_factory, pod_runner_factory, tmp_path):  # noqa: F811
    rel = release_factory(modelset=["featx-smoke/gpt2"])
    pod_runner_factory(rel.namespace, command_map=wrapper_map(tmp_path, "oom"))
    seen: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        seen.update({j["metadata"]["name"]: j for j in rel.jobs()})
        return rel.states() == {"featx-smoke/gpt2": "done"}

    rel.reconcile_until(done, 300, "gpt2 committed after an OOM")
    by_attempt = {j["metadata"]["labels"]["featx.io/attempt"]: j for j in seen.values()}
    assert by_attempt["1"]["metadata"]["labels"]["featx.io/gpu-class"] == "l4-24gb"
    assert by_attempt["2"]["metadata"]["labels"]["featx.io/gpu-class"] == "a100-40gb"
    assert memory_floor(by_attempt["2"]) == 40959
    # what `kubectl describe job` shows: why each attempt was made
    (created,) = rel.k8s_events(by_attempt["1"]["metadata"]["name"])
    assert created[:2] == ("Created", "Normal") and "model featx-smoke/gpt2, attempt 1, GPU class l4-24gb" in created[2]
    (retried,) = rel.k8s_events(by_attempt["2"]["metadata"]["name"])
    assert retried[:2] == ("Retried", "Normal")
    assert "attempt 2, GPU class a100-40gb x1: attempt 1 failed: out of memory on 1x l4-24gb (exit code 4)" in retried[2]


def test_metrics_scraped_from_a_controller_agree_with_featx_status(release_factory, pod_runner_factory,  # noqa: F811
                                                                  tmp_path):
    from featx.kube.health import Health, serve
    from tests.test_kube_metrics import scrape

    models = ["featx-smoke/gpt2", "nonexistent_arch_patch16_224"]
    rel = release_factory(modelset=models)
    pod_runner_factory(rel.namespace, command_map=wrapper_map(tmp_path, "oom"))  # attempt 1 of each: exit 4
    ctl = rel.controller()  # one controller: its counters add up over the passes
    server = serve(Health(600), 0, "127.0.0.1", metrics=ctl.metrics)
    try:
        def settled() -> bool:
            assert not ctl.run_once().errors
            return rel.states() == {models[0]: "done", models[1]: "failed"} and not active(rel.jobs())

        wait_until(settled, 300, "gpt2 done after an OOM, the missing model given up")
        ctl.run_once()
        got = scrape(server.server_address[1])
    finally:
        server.shutdown()
    out = subprocess.run([FEATX, "status", "--store", rel.config().store, "--models", *models, "--dataset",
                          "featx-sample", "--num_samples", "4", "--namespace", rel.namespace, "--release", RELEASE,
                          "--kubeconfig", str(rel.cluster.kubeconfig), "--json"],
                         capture_output=True, text=True, timeout=120, env=os.environ)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    status = {state: sum(r["state"] == state for r in rows) for state in {r["state"] for r in rows}}
    metrics = {dict(k[1])["state"]: int(v) for k, v in got.items() if k[0] == "featx_models" and v}
    assert metrics == status == {"done": 1, "failed": 1}
    counters = {(k[0], dict(k[1])["reason"], dict(k[1])["gpu_class"]): v for k, v in got.items()
                if k[0].endswith("_total")}
    assert counters == {("featx_jobs_created_total", "Created", "l4-24gb"): 2,
                        ("featx_jobs_retried_total", "oom", "a100-40gb"): 2,
                        ("featx_models_given_up_total", "permanent", "a100-40gb"): 1}
    assert got[("featx_reconcile_pass_seconds_count", ())] >= 3
    assert got[("featx_reconcile_last_success_timestamp_seconds", ())] > 0


def test_a_model_that_cannot_load_fails_permanently_after_one_attempt(release_factory, pod_runner_factory):  # noqa: F811
    rel = release_factory(modelset=["nonexistent_arch_patch16_224"])
    pod_runner_factory(rel.namespace, command_map=featx_map)
    rel.reconcile_until(lambda: bool(rel.events("give-up")), 300, "a give-up decision")
    (give_up,) = rel.events("give-up")
    assert give_up["attempt"] == 1 and "cannot succeed on retry (exit code 3)" in give_up["reason"]
    (job,) = rel.jobs()
    failed = [c for c in job["status"]["conditions"] if c["type"] == "Failed"]
    assert failed and failed[0]["reason"] == "PodFailurePolicy"
    scan = rel.states()
    assert scan == {"nonexistent_arch_patch16_224": "failed"}
    for _ in range(2):  # and it stays that way
        assert rel.reconcile().created == 0
    (job,) = rel.jobs()  # kept until the record is cleared: no TTL, marked
    assert [e[:2] for e in rel.k8s_events(job["metadata"]["name"])] == [("Created", "Normal"), ("GaveUp", "Warning")]
    assert "model nonexistent_arch_patch16_224, attempt 1" in rel.k8s_events(job["metadata"]["name"])[1][2]
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "cannot succeed on retry" in job["metadata"]["annotations"]["featx.io/gave-up"]
    # clearing the record retries it from attempt 1
    config = rel.config()
    store = open_store(config.store)
    (d,) = rel.controller().desired
    store.delete(d.key.failure)
    rel.reconcile_until(lambda: bool(rel.events("create")[1:]), 120, "a new first attempt")
    assert [e["attempt"] for e in rel.events("create")] == [1, 1]


def test_raising_the_concurrency_limit_runs_more_jobs(release_factory):
    rel = release_factory(modelset=SMOKE_LM, concurrency=2)  # no PodRunner: pods stay Running
    assert rel.reconcile().created == 2
    assert rel.reconcile().created == 0
    assert len(active(rel.jobs())) == 2
    rel.helm_run("upgrade", "--set", "concurrency=4")
    assert rel.reconcile().created == 2
    assert len(active(rel.jobs())) == 4


def test_a_pass_makes_one_list_and_parallel_bounded_creates(release_factory):
    """HTTP requests to the real API server, counted under featx's adapter: a cold pass lists Jobs
    once and creates one Job per model it can size, each with its `Created` Event, at most
    ``workers`` at a time (and more than one); the next pass is one list."""
    rel = release_factory(modelset="val", concurrency=100)
    controller = rel.controller()
    controller.workers = 4
    rest = controller.kube.api_client.rest_client
    requests: list[tuple[str, str]] = []
    in_flight, most, lock, real = [0], [0], threading.Lock(), rest.request

    def counted(method, url, *args, **kwargs):
        with lock:
            requests.append((method, url.split("?", 1)[0].rsplit("/", 1)[-1]))
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            return real(method, url, *args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    rest.request = counted
    result = controller.run_once()
    assert result.errors == [] and result.created > 8  # every model a GPU class holds
    assert sorted(requests) == sorted([("GET", "jobs")] + [("POST", "jobs"), ("POST", "events")] * result.created)
    assert 1 < most[0] <= 4
    requests.clear()
    assert controller.run_once().created == 0 and requests == [("GET", "jobs")]


def test_two_reconcilers_started_together_create_no_duplicates(release_factory):
    rel = release_factory(modelset=SMOKE_LM, concurrency=10)
    cmd = [FEATX, "reconcile", "--configmap", CONFIGMAP, "--namespace", rel.namespace,
           "--kubeconfig", str(rel.cluster.kubeconfig), "--log_format", "json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
             for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    jobs = rel.jobs()
    models = [j["metadata"]["annotations"]["featx.io/model-id"] for j in jobs]
    assert sorted(models) == sorted(SMOKE_LM)  # one Job each, however the creates interleaved
    creates = sum(o[1].count('"event": "create"') for o in outs)
    exists = sum(o[1].count('"event": "exists"') for o in outs)
    assert creates == len(SMOKE_LM) and creates + exists <= 2 * len(SMOKE_LM)


def test_bad_values_are_refused_at_install(release_factory):
    rel = release_factory(install=False, modelset=["gpt2"])
    out = rel.helm_run("install", "--set", "attempts=0", "--set", "modality=audio", check=False)
    assert out.returncode != 0
    assert "attempts" in out.stderr and "modality" in out.stderr
    listed = subprocess.run([rel.helm, "list", "-q", "--namespace", rel.namespace, "--kubeconfig",
                             str(rel.cluster.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert listed.stdout.strip() == ""
