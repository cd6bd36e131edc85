"""The reconciler's decisions as a table (no cluster), how Jobs are read, and the controller's
pass over a fake Kubernetes adapter and a real local store.

Builders (``job(...)``, ``done()``, ``failed(...)``) keep each case one line; the expected actions
are compared as short tuples.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from featx.catalog.spec import ModelSpec
from featx.kube.config import Desired, RunConfig
from featx.errors import TransientError
from featx.kube.controller import Controller
from featx.kube.events import event_for
from featx.kube.jobs import A_GPUS, A_MODEL_ID, A_STEM, L_ATTEMPT, L_CLASS, render_job
from featx.kube.observe import ObservedJob, observe, observe_job
from featx.kube.reconcile import Create, Delete, GiveUp, Settings, Skip, classify, decide
from featx.kube.helm import render_run_config
from featx.logs import EventLog
from featx.pipeline.request import RunRequest
from featx.plan.sizing import GpuClass, load_classes
from featx.store import FailureRecord, Manifest
from featx.store.keys import ArtifactKey
from featx.store.local import LocalStore
from featx.store.records import StoredState

CLASSES = load_classes()


def spec(name: str, params: int = 124_000_000) -> ModelSpec:
    return ModelSpec(id=f"org/{name}", modality="language", family="t", params=params, hidden=768, layers=12,
                     vocab=50257)


def want(name: str, params: int = 124_000_000) -> Desired:
    s = spec(name, params)
    return Desired(s, "avg", ArtifactKey("minhuh/prh", "wit_1024", s.file_name, "avg"), RunRequest("minhuh/prh").identity(s))


A, B, C = want("a"), want("b"), want("c")
BIG = want("big", params=70_000_000_000)


def job(d: Desired, attempt: int = 1, phase: str = "failed", *, cls: str = "l4-24gb", gpus: int = 1, code=None,
        reason: str = "", pod_reason: str = "", deleting: bool = False, pod_message: str = "") -> ObservedJob:
    if phase == "failed" and not reason:
        reason = "BackoffLimitExceeded"
    return ObservedJob(f"job-{d.spec.file_name}-a{attempt}", d.id, d.stem, attempt, cls, gpus, phase, reason,
                       "", code, pod_reason, deleting, pod_message=pod_message)


def done(d: Desired | None = None, **other) -> StoredState:
    """Committed; with ``d``, a manifest of ``d``'s identity changed by ``other`` (stale if any)."""
    if d is None:
        return StoredState("done")
    identity = {**asdict(d.identity), "rows_fingerprint": "f" * 64, "num_rows": 1024, **other}
    return StoredState("done", Manifest(**identity, modality="language",
                                        sha256="0" * 64, size=1, shape=[1024, 13, 768], dtype="bfloat16",
                                        featx_version="test"))


def failed(kind: str = "transient", reason: str = "boom", attempt: int = 1) -> StoredState:
    return StoredState("failed", failure=FailureRecord("m", reason, kind, attempt), reason=reason)


def short(action) -> tuple:
    if isinstance(action, Create):
        return ("create", action.model, action.attempt, action.sizing.class_name, action.sizing.gpus)
    if isinstance(action, Delete):
        return ("delete", action.name)
    if isinstance(action, GiveUp):
        return ("give-up", action.model, action.attempt, action.record)
    return ("skip", action.model, action.kind)


@dataclass
class Case:
    desired: list[Desired]
    want: list[tuple]
    committed: dict[str, StoredState] = field(default_factory=dict)  # by stem
    observed: list[ObservedJob] = field(default_factory=list)
    attempts: int = 3
    concurrency: int = 10
    classes: tuple[GpuClass, ...] = CLASSES
    reason_has: str = ""  # a substring of the first GiveUp/Skip reason


CASES: dict[str, Case] = {
    "nothing committed, no Jobs: first attempts on the smallest class": Case(
        [A, B], [("create", A.id, 1, "l4-24gb", 1), ("create", B.id, 1, "l4-24gb", 1)]),
    "a 70B model asks for two 80 GB devices": Case([BIG], [("create", BIG.id, 1, "h100-80gb", 2)]),
    "committed: nothing to do": Case([A], [("skip", A.id, "done")], committed={A.stem: done()}),
    "committed with the run's identity (rows and device known only to the Job): done": Case(
        [A], [("skip", A.id, "done")], committed={A.stem: done(A, compute_dtype="bfloat16")}),
    "committed on the first 8 rows, the run wants all: stale, extracted again": Case(
        [A], [("create", A.id, 1, "l4-24gb", 1)], committed={A.stem: done(A, num_samples=8, num_rows=8)}),
    "committed from random weights, the run wants pretrained: stale": Case(
        [A], [("create", A.id, 1, "l4-24gb", 1)], committed={A.stem: done(A, init="random", seed=1)}),
    "stale: its finished Jobs are not cleaned up as done, the Job that left it counts as an attempt": Case(
        [A], [("create", A.id, 2, "l4-24gb", 1)], committed={A.stem: done(A, format="safetensors")},
        observed=[job(A, 1, "succeeded")]),
    "stale after the last attempt: give up with the difference": Case(
        [A], [("give-up", A.id, 1, True)], committed={A.stem: done(A, caption_idx=2)},
        observed=[job(A, 1, "succeeded")], attempts=1, reason_has="caption_idx: 2 -> 0"),
    "committed: its finished Jobs are cleaned up": Case(
        [A], [("delete", "job-org_a-a1"), ("delete", "job-org_a-a2"), ("skip", A.id, "done")],
        committed={A.stem: done()}, observed=[job(A, 1, "failed"), job(A, 2, "succeeded")]),
    "committed: a Job already going away is not deleted twice": Case(
        [A], [("skip", A.id, "done")], committed={A.stem: done()}, observed=[job(A, 1, "succeeded", deleting=True)]),
    "running Job: left alone": Case([A], [("skip", A.id, "running")], observed=[job(A, 1, "running")]),
    "pending Job: left alone": Case([A], [("skip", A.id, "pending")], observed=[job(A, 2, "pending"), job(A, 1)]),
    "a Job being deleted: wait": Case([A], [("skip", A.id, "deleting")],
                                      observed=[job(A, 1, "running", deleting=True)]),
    "transient failure: next attempt on the same class": Case(
        [A], [("create", A.id, 2, "l4-24gb", 1)], committed={A.stem: failed()}, observed=[job(A, 1, code=1)]),
    "attempts limit reached: give up and record it": Case(
        [A], [("give-up", A.id, 3, True)], committed={A.stem: failed(reason="network down")},
        observed=[job(A, 1, code=1), job(A, 2, code=1), job(A, 3, code=1)], reason_has="gave up after 3"),
    "attempts limit 1: give up after the first failure": Case(
        [A], [("give-up", A.id, 1, True)], observed=[job(A, 1, code=1)], attempts=1),
    "exit code 3 (cannot load): give up at once; the pod recorded it already": Case(
        [A], [("give-up", A.id, 1, False)], committed={A.stem: failed("permanent", "not found on the hub")},
        observed=[job(A, 1, code=3, reason="PodFailurePolicy")], reason_has="not found on the hub"),
    "PodFailurePolicy without a pod to read: permanent": Case(
        [A], [("give-up", A.id, 1, True)], observed=[job(A, 1, reason="PodFailurePolicy")]),
    "exit code 2 (usage) is permanent too": Case([A], [("give-up", A.id, 1, True)], observed=[job(A, 1, code=2)]),
    "stopped by SIGTERM (exit 143: pod deleted or preempted): next attempt on the same class": Case(
        [A], [("create", A.id, 2, "l4-24gb", 1)], observed=[job(A, 1, code=143)]),
    "stopped by SIGTERM at the limit: give up with featx's own line": Case(
        [A], [("give-up", A.id, 1, True)], attempts=1, observed=[job(
            A, 1, code=143, pod_message="featx: interrupted by SIGTERM: committed nothing; not committed: org/a (in progress)")],
        reason_has="exit code 143: featx: interrupted by SIGTERM"),
    "Complete without a commit counts as a failed attempt": Case(
        [A], [("create", A.id, 2, "l4-24gb", 1)], observed=[job(A, 1, "succeeded")]),
    "Complete without a commit at the limit: give up": Case(
        [A], [("give-up", A.id, 1, True)], observed=[job(A, 1, "succeeded")], attempts=1,
        reason_has="committed no output"),
    "out of memory (exit 4): next attempt on the next larger class": Case(
        [A], [("create", A.id, 2, "a100-40gb", 1)], observed=[job(A, 1, code=4)]),
    "OOMKilled (137): next larger class": Case(
        [A], [("create", A.id, 2, "a100-40gb", 1)], observed=[job(A, 1, code=137, pod_reason="OOMKilled")]),
    "after an OOM escalation a transient failure stays on the larger class": Case(
        [A], [("create", A.id, 3, "a100-40gb", 1)],
        observed=[job(A, 1, code=4), job(A, 2, code=1, cls="a100-40gb")]),
    "out of memory on the largest option: give up": Case(
        [A], [("give-up", A.id, 1, True)], observed=[job(A, 1, code=4, cls="h200-141gb", gpus=8)],
        reason_has="no larger GPU class"),
    "deadline exceeded: retried": Case([A], [("create", A.id, 2, "l4-24gb", 1)],
                                       observed=[job(A, 1, reason="DeadlineExceeded")]),
    "gave up earlier (record in store): GiveUp again but not recorded twice": Case(
        [A], [("give-up", A.id, 2, False)], committed={A.stem: failed("permanent", "gave up after 2 attempt(s)")},
        observed=[job(A, 1, code=1), job(A, 2, code=1)], attempts=2),
    "permanent failure on record and no Job: skip": Case(
        [A], [("skip", A.id, "failed")], committed={A.stem: failed("permanent", "gated")}, reason_has="gated"),
    "transient failure on record and no Job: first attempt": Case(
        [A], [("create", A.id, 1, "l4-24gb", 1)], committed={A.stem: failed("transient")}),
    "corrupt in the store: extract again": Case(
        [A], [("create", A.id, 1, "l4-24gb", 1)], committed={A.stem: StoredState("corrupt", reason="etag differs")}),
    "concurrency limit: the rest waits": Case(
        [A, B, C], [("create", A.id, 1, "l4-24gb", 1), ("create", B.id, 1, "l4-24gb", 1), ("skip", C.id, "waiting")],
        concurrency=2),
    "concurrency counts every active Job of the release": Case(
        [A, B, C], [("skip", A.id, "running"), ("create", B.id, 1, "l4-24gb", 1), ("skip", C.id, "waiting")],
        observed=[job(A, 1, "running"), job(want("not-desired"), 1, "pending")], concurrency=3),
    "concurrency: finished Jobs do not count": Case(
        [A, B], [("create", A.id, 2, "l4-24gb", 1), ("skip", B.id, "waiting")],
        observed=[job(A, 1, code=1)], concurrency=1),
    "retries wait for the limit like first attempts": Case(
        [A, B], [("skip", A.id, "waiting"), ("skip", B.id, "running")],
        observed=[job(A, 1, code=1), job(B, 1, "running")], concurrency=1),
    "no class holds it: skipped with the reason, nothing recorded": Case(
        [BIG], [("skip", BIG.id, "unsized")], classes=(GpuClass("small", 16384, max_per_node=1),),
        reason_has="no enabled GPU class"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decide(name):
    case = CASES[name]
    settings = Settings(attempts=case.attempts, concurrency=case.concurrency, classes=case.classes)
    actions = decide(case.desired, case.committed, case.observed, settings)
    assert [short(a) for a in actions] == case.want
    if case.reason_has:
        first = next(a for a in actions if isinstance(a, (GiveUp, Skip)))
        assert case.reason_has in first.reason


def test_committed_models_keep_their_finished_jobs_for_the_ttl():
    observed = [job(A, 1, "failed", code=1), job(A, 2, "succeeded")]
    for ttl, deleted in ((0, {"job-org_a-a1", "job-org_a-a2"}), (3600, set())):
        actions = decide([A], {A.stem: done()}, observed, Settings(classes=CLASSES, ttl_s=ttl))
        assert {a.name for a in actions if isinstance(a, Delete)} == deleted
        assert short(actions[-1]) == ("skip", A.id, "done")


def test_a_given_up_models_last_job_is_kept_until_its_record_is_cleared():
    settings = Settings(attempts=2, classes=CLASSES, ttl_s=3600)
    gone = [job(A, 1, code=1), replace(job(A, 2, code=1), ttl_s=3600)]
    (give_up,) = decide([A], {}, gone, settings)  # first give-up: record it, keep the last Job
    assert isinstance(give_up, GiveUp) and give_up.record and give_up.keep == "job-org_a-a2"
    kept = [gone[0], replace(gone[1], ttl_s=None, kept=True)]
    recorded = {A.stem: failed("permanent", "gave up after 2 attempt(s)", attempt=2)}
    (again,) = decide([A], recorded, kept, settings)  # later passes: nothing more to write
    assert isinstance(again, GiveUp) and not again.record and again.keep == ""
    # the record cleared (deleted by the user, or never written by a pod) while the Job is kept: start over
    assert [short(a) for a in decide([A], {}, kept, settings)] == [("delete", "job-org_a-a1"), ("delete", "job-org_a-a2")]
    assert [short(a) for a in decide([A], {}, [], settings)] == [("create", A.id, 1, "l4-24gb", 1)]


def test_decide_is_pure_and_deterministic():
    observed = [job(A, 1, code=1), job(B, 1, "running")]
    settings = Settings(concurrency=5, classes=CLASSES)
    first = decide([A, B, C], {}, observed, settings)
    assert [short(a) for a in first] == [short(a) for a in decide([A, B, C], {}, observed, settings)]
    assert {a.name for a in first if isinstance(a, Create)} == {a.name for a in decide([A, B, C], {}, observed, settings)
                                                                if isinstance(a, Create)}


def test_classify_reasons_carry_the_pod_and_store_text():
    f = classify(job(A, 1, code=1), failed(reason="S3 timeout"))
    assert f.kind == "transient" and "exit code 1" in f.reason and "S3 timeout" in f.reason
    f = classify(job(A, 1, code=4, cls="a100-40gb"), None)
    assert f.kind == "oom" and "1x a100-40gb" in f.reason


# -- reading Jobs -----------------------------------------------------------------------------


def job_manifest(name: str, d: Desired, attempt: int = 1, conditions=(), status=None, **meta) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {L_ATTEMPT: str(attempt), L_CLASS: "a100-40gb"},
                         "annotations": {A_MODEL_ID: d.id, A_STEM: d.stem, A_GPUS: "2"}, **meta},
            "spec": {}, "status": {"conditions": list(conditions), **(status or {})}}


def pod(job_name: str, code: int, reason: str, finished: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"batch.kubernetes.io/job-name": job_name}},
            "status": {"containerStatuses": [{"name": "extract", "state": {"terminated": {
                "exitCode": code, "reason": reason, "finishedAt": finished}}}]}}


def test_observe_reads_phase_attempt_class_and_exit_code():
    cond = lambda t, r="", m="": {"type": t, "status": "True", "reason": r, "message": m}  # noqa: E731
    jobs = [
        job_manifest("j1", A, 1, [cond("Complete")]),
        job_manifest("j2", B, 2, [cond("Failed", "BackoffLimitExceeded")]),
        job_manifest("j3", C, 1, status={"active": 1, "ready": 1}),
        job_manifest("j4", C, 2, status={"active": 1, "ready": 0}),
        job_manifest("j5", A, 3, [cond("Failed", "PodFailurePolicy",
                                       "Container extract for pod ns/j5-x failed with exit code 3 matching FailJob rule at index 0")]),
        {"metadata": {"name": "not-ours", "labels": {}, "annotations": {}}, "status": {}},
        job_manifest("j6", B, 1, status={"active": 1}, deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    pods = [pod("j2", 1, "Error", "2026-01-01T00:00:01Z"), pod("j2", 137, "OOMKilled", "2026-01-01T00:00:09Z")]
    got = {o.name: o for o in observe(jobs, pods)}
    assert set(got) == {"j1", "j2", "j3", "j4", "j5", "j6"}
    assert got["j1"].phase == "succeeded" and got["j1"].finished
    assert (got["j2"].phase, got["j2"].attempt, got["j2"].exit_code, got["j2"].pod_reason) == ("failed", 2, 137, "OOMKilled")
    assert (got["j2"].gpu_class, got["j2"].gpus) == ("a100-40gb", 2)
    assert got["j3"].phase == "running" and got["j3"].active
    assert got["j4"].phase == "pending"
    assert got["j5"].exit_code == 3 and got["j5"].reason == "PodFailurePolicy"
    assert got["j6"].deleting and not got["j6"].active
    assert observe_job({"metadata": {"name": "x", "annotations": {A_MODEL_ID: "m", A_STEM: "s"}},
                        "spec": {"suspend": True}, "status": {"active": 0}}).phase == "pending"


# -- the controller over a fake adapter -------------------------------------------------------


class FakeKube:
    """The adapter's four calls over an in-memory namespace; every call is counted."""

    def __init__(self):
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.events: list[dict[str, Any]] | None = []  # None: every Event write fails
        self.namespace = "ns"

    def list_jobs(self, selector):
        self.calls.append("list_jobs")
        key, value = selector.split("=")
        return [j for j in self.jobs.values() if j["metadata"]["labels"].get(key) == value]

    def list_pods(self, selector):
        self.calls.append("list_pods")
        return list(self.pods)

    def create_job(self, manifest):
        self.calls.append("create_job")
        name = manifest["metadata"]["name"]
        if name in self.jobs:
            return None
        self.jobs[name] = {**manifest, "metadata": {**manifest["metadata"], "uid": f"uid-{name}"}, "status": {}}
        return f"uid-{name}"

    def create_event(self, event):
        self.calls.append("create_event")
        if self.events is None:
            raise TransientError("create event: 403 forbidden")
        self.events.append(event)

    def delete_job(self, name):
        self.calls.append("delete_job")
        return self.jobs.pop(name, None) is not None

    def keep_job(self, name, reason):
        self.calls.append("keep_job")
        if name not in self.jobs:
            return False
        self.jobs[name]["spec"].pop("ttlSecondsAfterFinished", None)
        self.jobs[name]["metadata"].setdefault("annotations", {})["featx.io/gave-up"] = reason
        return True

    def finish(self, name, ok: bool, code: int = 0):
        cond = {"type": "Complete" if ok else "Failed", "status": "True", "reason": "" if ok else "BackoffLimitExceeded"}
        self.jobs[name]["status"] = {"conditions": [cond]}
        if not ok:
            self.pods.append(pod(name, code, "Error", "2026-01-01T00:00:00Z"))


@pytest.fixture(scope="module")
def run_yaml(helm) -> dict:
    return render_run_config(sets=["modelset={featx-smoke/gpt2,featx-smoke/vit,featx-smoke/opt}", "dataset=featx-sample",
                                   "subset=null", "concurrency=2", "attempts=2"], release="rel", namespace="ns")


@pytest.fixture
def config(run_yaml) -> RunConfig:
    """The controller's config from the ConfigMap helm renders (a fresh copy per test)."""
    return RunConfig.from_dict(copy.deepcopy(run_yaml))


def commit(store: LocalStore, d: Desired, tmp: Path) -> None:
    data = tmp / "f.pt"
    data.write_bytes(b"features")
    sha = hashlib.sha256(b"features").hexdigest()
    m = Manifest(**{**asdict(d.identity), "rows_fingerprint": "x", "num_rows": 1},
                 modality=d.spec.modality, sha256=sha, size=8, shape=[1, 1, 1], dtype="float32",
                 featx_version="test")
    store.commit(d.key, data, m)


def test_controller_passes(config, tmp_path, capsys):
    kube, store = FakeKube(), LocalStore(tmp_path / "store")
    ctl = Controller(config, kube, store, EventLog("json"))
    gpt2, vit, opt = ctl.desired

    r = ctl.run_once()
    assert (r.created, r.errors) == (2, [])
    # no pods listed: nothing failed; each created Job gets its Event
    assert kube.calls[0] == "list_jobs" and sorted(kube.calls[1:]) == ["create_event"] * 2 + ["create_job"] * 2
    assert {(e["reason"], e["regarding"]["name"], e["regarding"]["uid"]) for e in kube.events} == {
        ("Created", n, f"uid-{n}") for n in kube.jobs}
    names = sorted(kube.jobs)
    assert all(n.startswith("rel-featx-smoke-") and n.endswith("-a1") for n in names)

    # the same pass again (a restart, or a second reconciler): nothing new
    kube.calls.clear()
    assert ctl.run_once().created == 0 and kube.calls == ["list_jobs"]

    # gpt2 commits and completes; vit fails transiently -> opt starts, vit's retry waits for a slot
    gpt2_job = next(n for n in names if "gpt2" in n)
    vit_job = next(n for n in names if "vit" in n)
    commit(store, gpt2, tmp_path)
    kube.finish(gpt2_job, ok=True)
    kube.finish(vit_job, ok=False, code=1)
    kube.calls.clear()
    r = ctl.run_once()
    assert kube.calls[:2] == ["list_jobs", "list_pods"]
    # the chart's default TTL: the finished Job stays for Kubernetes to remove, with its logs
    assert [short(a) for a in r.actions] == [("skip", gpt2.id, "done"),
                                             ("create", vit.id, 2, "l4-24gb", 1), ("create", opt.id, 1, "l4-24gb", 1)]
    assert kube.jobs[gpt2_job]["spec"]["ttlSecondsAfterFinished"] == 3600

    # vit fails again at the attempts limit (2): give up, recorded once in the store
    kube.finish(vit_job.replace("-a1", "-a2"), ok=False, code=1)
    r = ctl.run_once()
    assert r.gave_up == 1
    state = store.scan(config.scan_prefix)[vit.stem]
    assert state.state == "failed" and state.failure.kind == "permanent" and state.failure.attempt == 2
    assert "gave up after 2 attempt(s)" in state.failure.reason
    assert ctl.run_once().gave_up == 0  # not recorded twice
    last = kube.jobs[vit_job.replace("-a1", "-a2")]  # kept until the record is cleared
    assert "ttlSecondsAfterFinished" not in last["spec"] and "gave up" in last["metadata"]["annotations"]["featx.io/gave-up"]
    assert kube.calls.count("keep_job") == 1
    seen = [(e["reason"], e["type"], e["regarding"]["name"]) for e in kube.events[2:]]
    assert len(seen) == 3 and set(seen[:2]) == {  # one per decision that acts, none per later pass
        ("Retried", "Normal", vit_job.replace("-a1", "-a2")), ("Created", "Normal", next(n for n in kube.jobs if "opt" in n))}
    assert seen[2] == ("GaveUp", "Warning", vit_job.replace("-a1", "-a2"))
    assert "model featx-smoke/vit, attempt 2, GPU class l4-24gb: gave up after 2" in kube.events[-1]["note"]
    assert any("attempt 1 failed: exit code 1" in e["note"] for e in kube.events[2:4] if e["reason"] == "Retried")

    events = [line for line in capsys.readouterr().err.splitlines()]
    kinds = [__import__("json").loads(e)["event"] for e in events]
    assert {"create", "retry", "give-up", "skip-done", "pass"} <= set(kinds)
    assert kinds.count("give-up") == 1  # logged once, not once per pass


def test_an_event_that_cannot_be_written_never_fails_a_pass(config, tmp_path, capsys):
    kube = FakeKube()
    kube.events = None  # every write refused
    r = Controller(config, kube, LocalStore(tmp_path / "store"), EventLog("json")).run_once()
    assert (r.created, r.errors) == (2, []) and kube.calls.count("create_event") == 2
    lines = [__import__("json").loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [x["reason"] for x in lines if x["event"] == "error"] == ["create event: 403 forbidden"] * 2


def test_a_stale_file_redone_records_redone():
    (create,) = decide([A], {A.stem: done(A, num_samples=8, num_rows=8)}, [], Settings(classes=CLASSES))
    event = event_for(create, "ns", "ctl-0", uid="u1")
    assert (event["reason"], event["action"], event["type"]) == ("Redone", "Create", "Normal")
    assert event["regarding"] == {"apiVersion": "batch/v1", "kind": "Job", "name": create.name, "namespace": "ns",
                                  "uid": "u1"}
    assert event["note"].startswith("model org/a, attempt 1, GPU class l4-24gb x1: store says stale: ")
    assert event_for(Skip(A.id, "done"), "ns", "ctl-0") is None
    assert event["metadata"]["name"].startswith(create.name + ".")


def test_controller_lists_jobs_before_scanning_the_store(config, tmp_path):
    order: list[str] = []

    class Recording(FakeKube):
        def list_jobs(self, selector):
            order.append("jobs")
            return super().list_jobs(selector)

    class RecordingStore(LocalStore):
        def scan(self, prefix=""):
            order.append("store")
            return super().scan(prefix)

    Controller(config, Recording(), RecordingStore(tmp_path), EventLog("json")).run_once()
    assert order == ["jobs", "store"]


def test_racing_controllers_create_each_job_once(config, tmp_path):
    kube, store = FakeKube(), LocalStore(tmp_path)
    a = Controller(config, kube, store, EventLog("json"))
    b = Controller(config, kube, store, EventLog("json"))
    plan_a, plan_b = a.plan(), b.plan()  # both observe the same empty cluster
    assert [x.name for x in plan_a if isinstance(x, Create)] == [x.name for x in plan_b if isinstance(x, Create)]
    ra = a.run_once()
    rb = b.run_once()
    assert ra.created == 2 and rb.created == 0 and len(kube.jobs) == 2


def test_dry_run_changes_nothing(config, tmp_path):
    kube = FakeKube()
    r = Controller(config, kube, LocalStore(tmp_path), EventLog("json")).run_once(dry_run=True)
    assert kube.jobs == {} and r.created == 0 and any(isinstance(a, Create) for a in r.actions)


def test_rendered_job_of_a_create(config):
    d = config.desired()[0]
    settings = replace(Settings(classes=config.classes, release=config.release),
                       render=lambda d, s, n, shards: render_job(config, d, s, n, shards))
    (create, *_) = decide([d], {}, [], settings)
    job = create.job
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == create.name
    assert c["args"][:2] == ["--models", d.id] and "--attempt" in c["args"] and "--gpu_class" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["backoffLimit"] == 0


def test_watch_survives_a_failing_pass(config, tmp_path, capsys):
    from featx.errors import TransientError

    class Flaky(FakeKube):
        fails = 1

        def list_jobs(self, selector):
            if self.fails:
                self.fails -= 1
                raise TransientError("list jobs: cannot reach the Kubernetes API")
            return super().list_jobs(selector)

    kube = Flaky()
    assert Controller(config, kube, LocalStore(tmp_path), EventLog("json")).watch(interval=0, max_passes=2) == 0
    assert len(kube.jobs) == 2
    assert "cannot reach the Kubernetes API" in capsys.readouterr().err


def test_a_permanent_failure_without_a_record_says_what_the_container_said():
    """featx's one line (the pod's termination message) is the give-up reason when the store has
    no failure record (featx could not write one); the record wins when there is one."""
    said = "featx-test/x is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: download it first"
    failed = replace(job(A, 1, "failed", reason="PodFailurePolicy", code=3), pod_message=said)
    got = classify(failed, None)
    assert (got.kind, got.reason) == ("permanent", f"cannot succeed on retry (exit code 3): {said}")
    assert classify(replace(failed, pod_message=""), None).reason == "cannot succeed on retry (exit code 3)"


def test_observe_keeps_the_last_line_of_the_termination_message():
    manifest = job_manifest("j", A, conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    p = pod("j", 3, "Error", "2026-01-01T00:00:00Z")
    p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "a log line\nfeatx: error: the one line\n"
    (observed,) = observe([manifest], [p])
    assert observed.pod_message == "featx: error: the one line"


def _rot(store: LocalStore, rel: str) -> None:
    """Flip one bit of ``rel`` and put its mtime back: the listing (size + mtime) cannot tell."""
    path = store.root / rel
    st, data = path.stat(), bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("verify", [False, True])
def test_verify_true_makes_the_controller_redo_bit_rot(run_yaml, tmp_path, verify):
    """``verify: true`` in the values: the controller hashes committed files (once per ETag) and
    gives a rotten one a Job that runs ``featx extract --verify``; without it the listing says done."""
    config = RunConfig.from_dict({**copy.deepcopy(run_yaml), "verify": verify})
    store = LocalStore(tmp_path / "store")
    gpt2, vit, opt = config.desired()
    for d in (gpt2, vit, opt):
        commit(store, d, tmp_path)
    _rot(store, gpt2.key.data)
    reads: list[str] = []

    class Counting(LocalStore):
        def sha256_of(self, rel, progress=lambda n: None):
            reads.append(rel)
            return super().sha256_of(rel, progress)

    ctl = Controller(config, FakeKube(), Counting(store.root), EventLog("json"))
    creates = [a for a in ctl.plan() if isinstance(a, Create)]
    assert [a.model for a in creates] == ([gpt2.id] if verify else [])
    if verify:
        assert "sha256" in creates[0].why and "--verify" in creates[0].job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert sorted(reads) == sorted(d.key.data for d in (gpt2, vit, opt))
        ctl.plan()
        assert len(reads) == 3  # each file hashed once per controller and ETag, not every pass
    else:
        assert reads == []


@pytest.mark.parametrize("garbage", [b"", b"{}", b"[]", b"{not json", b'{"size": ' + b"9" * 5000 + b"}"])
def test_the_controller_redoes_an_unreadable_manifest(config, tmp_path, garbage):
    """What a store holds never ends a pass in a traceback: the model whose manifest is not one
    gets a Job (``store says corrupt: unreadable manifest …``), the others are done."""
    store = LocalStore(tmp_path / "store")
    gpt2, vit, opt = config.desired()
    for d in (gpt2, vit, opt):
        commit(store, d, tmp_path)
    store.put_bytes(vit.key.manifest, garbage)
    store.put_bytes(f"{config.scan_prefix}stray.failure.json", garbage)
    creates = [a for a in Controller(config, FakeKube(), store, EventLog("json")).plan() if isinstance(a, Create)]
    assert [a.model for a in creates] == [vit.id] and "unreadable manifest" in creates[0].why
