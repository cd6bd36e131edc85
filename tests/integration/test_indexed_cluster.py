"""A sharded model (``sharding.rowsPerShard``) as one Indexed Job, against the real control plane
(kube-apiserver's validation of ``backoffLimitPerIndex``/``FailIndex``, the Job controller's
indices and ``JOB_COMPLETION_INDEX``) and a real SeaweedFS store; pods run as local processes
(tests/integration/test_reconcile_cluster.py describes the harness)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from typing import Any

import pytest

from featx.errors import UsageError
from featx.kube.config import MAX_INDEXES
from featx.kube.jobs import extract_args
from featx.pipeline.request import judge_stored
from featx.plan.sizing import choose
from localcluster.controlplane import wait_until
from tests.cluster.fixtures import gpu_nodes, k8s_api, k8s_namespace, pod_runner_factory  # noqa: F401
from tests.integration.test_reconcile_cluster import FEATX, release_factory  # noqa: F401

pytestmark = [pytest.mark.k8s, pytest.mark.s3]

MODEL = "featx-smoke/gpt2"
SHARDED = {"modelset": [MODEL], "numSamples": 4, "sharding": {"rowsPerShard": 1, "parallelism": 2}}
#: the pods run this checkout's featx, as the image would (not whatever the venv was installed from)
HOST_ENV = ("PATH", "HOME", "PYTHONPATH")

# Stand-ins for the image's entrypoint: the pod's shard (``mine``) as featx reads it, then a fault or the real featx.
POD_SHARD = """
import os, sys
from featx.pipeline.shards import parse_indices
featx, args = sys.argv[1], sys.argv[2:]
value = lambda flag: args[args.index(flag) + 1]
mine = parse_indices(value("--shard_indices"))[int(value("--completion_index"))]
"""
# shard {oom_shard} runs out of memory on attempt 1
WRAPPER = POD_SHARD + """
if value("--attempt") == "1" and mine == {oom_shard}:
    print(f"injected out of memory on shard {{mine}}", flush=True)
    sys.exit(4)
os.execv(featx, [featx, *args])
"""


def every_shard_done(controller: Any) -> bool:
    """The release's one model is done: all 4 shards committed, as the controller judges them."""
    (d,) = controller.desired
    return judge_stored(controller.store.scan(controller.config.scan_prefix), d.stem, d.identity, 4).state == "done"


def spec_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]


def args_of(job: dict[str, Any]) -> list[str]:
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_the_api_server_accepts_the_indexed_job_and_checks_its_per_index_fields(release_factory):  # noqa: F811
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    rel = release_factory(**SHARDED)
    controller = rel.controller()
    (d,) = controller.desired
    assert d.layout is not None and d.layout.num_shards == 4  # 4 rows (numSamples), 1 row per shard
    assert rel.reconcile().created == 1
    (job,) = rel.jobs()  # as the API server stored it (defaults filled in, nothing dropped)
    spec = spec_of(job)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 2)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (1, 4)
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailIndex" and rules[0]["onExitCodes"]["values"] == [2, 3, 4]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert value(args_of(job), "--shard_indices") == "0-3"

    # the same manifest without backoffLimitPerIndex: the server refuses FailIndex (its validation is real)
    sizing = choose(d.spec, controller.config.classes)
    bad = copy.deepcopy(controller.settings.render(d, sizing, 2, (0, 1, 2, 3)))
    del bad["spec"]["backoffLimitPerIndex"]
    with pytest.raises(UsageError, match="FailIndex|backoffLimitPerIndex"):
        controller.kube.create_job(bad)
    bad = copy.deepcopy(controller.settings.render(d, sizing, 2, (0, 1, 2, 3)))
    bad["spec"]["maxFailedIndexes"] = 5  # more failed indexes allowed than there are completions
    with pytest.raises(ApiException) as refused:
        client.BatchV1Api(rel.api).create_namespaced_job(rel.namespace, bad)
    assert refused.value.status == 422 and "maxFailedIndexes" in refused.value.body
    # the most indices the controller renders (featx.kube.config.MAX_INDEXES) is the server's limit
    for count, accepted in ((MAX_INDEXES, True), (MAX_INDEXES + 1, False)):
        big = copy.deepcopy(controller.settings.render(d, sizing, 3 + accepted, (0,)))
        big["spec"].update(completions=count, maxFailedIndexes=count, suspend=True)  # suspended: no pods
        if accepted:
            assert controller.kube.create_job(big)
        else:
            with pytest.raises(UsageError, match="completions"):
                controller.kube.create_job(big)


def test_one_indexed_job_runs_only_the_missing_shards_and_an_oom_moves_the_rest_up(  # noqa: F811
        release_factory, pod_runner_factory, tmp_path):  # noqa: F811
    rel = release_factory(**SHARDED)
    controller = rel.controller()
    config, store = controller.config, controller.store
    (d,) = controller.desired

    # shards 0 and 2 committed before: by the real featx extract, run here as a user would
    args = extract_args(config, d, choose(d.spec, config.classes), 1, (0, 2))
    at = args.index("--completion_index")  # this process runs both shards, not one of them
    del args[at:at + 2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FEATX_NUM_WORKERS": "0", "FEATX_HOME": str(tmp_path / "home")}
    out = subprocess.run([FEATX, "extract", *args], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]

    def shards() -> dict[int, Any]:
        scan = store.scan(config.scan_prefix)
        return {i: scan[d.key.shard(i, 4).stem].manifest for i in range(4)
                if d.key.shard(i, 4).stem in scan and scan[d.key.shard(i, 4).stem].state == "done"}

    before = shards()
    assert sorted(before) == [0, 2]

    assert rel.reconcile().created == 1
    (first,) = rel.jobs()  # one Job for the model, over the 2 missing shards only
    assert spec_of(first)["completions"] == 2 and value(args_of(first), "--shard_indices") == "1,3"

    script = tmp_path / "entrypoint.py"
    script.write_text(WRAPPER.format(oom_shard=3))
    pod_runner_factory(rel.namespace, host_env=HOST_ENV,
                       command_map=lambda argv: [sys.executable, str(script), FEATX, *argv[1:]])

    rel.reconcile_until(lambda: every_shard_done(controller), 600, "every shard committed")
    jobs = {j["metadata"]["labels"]["featx.io/attempt"]: j for j in rel.jobs()}
    assert sorted(jobs) == ["1", "2"]
    failed = [c for c in jobs["1"]["status"]["conditions"] if c["type"] == "Failed" and c["status"] == "True"]
    assert failed and failed[0]["reason"] == "FailedIndexes"
    assert jobs["1"]["status"]["completedIndexes"] == "0" and jobs["1"]["status"]["failedIndexes"] == "1"
    # attempt 2: only the shard that ran out of memory, on the next larger class
    second = jobs["2"]
    assert second["metadata"]["labels"]["featx.io/gpu-class"] == "a100-40gb"
    assert spec_of(second)["completions"] == 1 and value(args_of(second), "--shard_indices") == "3"
    (retry,) = rel.events("retry")
    assert retry["shards"] == "3" and "out of memory on 1x l4-24gb" in retry["reason"]
    after = shards()
    assert sorted(after) == [0, 1, 2, 3]
    assert {i: after[i] for i in (0, 2)} == before  # committed shards were never extracted again
    assert [(m.row_start, m.row_end, m.num_shards) for _, m in sorted(after.items())] == \
        [(0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 4, 4)]
    assert rel.reconcile().summary().get("skip_done") == 1


# the first pod of shard {hold_shard} waits (until it is evicted); its replacement runs the real featx
HOLD = POD_SHARD + """
import time
from pathlib import Path
marker = Path({marker!r})
if mine == {hold_shard} and not marker.exists():
    marker.write_text(str(os.getpid()))
    time.sleep(600)
os.execv(featx, [featx, *args])
"""


def test_an_evicted_shard_is_run_again_in_the_same_job_without_counting(  # noqa: F811
        release_factory, pod_runner_factory, tmp_path):  # noqa: F811
    from kubernetes import client

    # no retry in place: had the eviction counted, shard 2's index would fail, and with it the Job (attempt 2 next)
    rel = release_factory(**{**SHARDED, "sharding": {**SHARDED["sharding"], "backoffLimitPerIndex": 0}})
    controller = rel.controller()
    marker = tmp_path / "held"
    script = tmp_path / "entrypoint.py"
    script.write_text(HOLD.format(marker=str(marker), hold_shard=2))
    runner = pod_runner_factory(rel.namespace, host_env=HOST_ENV,
                                command_map=lambda argv: [sys.executable, str(script), FEATX, *argv[1:]])
    assert rel.reconcile().created == 1
    (job,) = rel.jobs()
    core = client.CoreV1Api(rel.api)
    selector = f"batch.kubernetes.io/job-name={job['metadata']['name']},batch.kubernetes.io/job-completion-index=2"
    wait_until(marker.exists, 120, lambda: f"the pod of shard 2 to be running; pods: {runner.logs} {runner.errors}")
    (held,) = core.list_namespaced_pod(rel.namespace, label_selector=selector).items
    core.create_namespaced_pod_eviction(held.metadata.name, rel.namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=held.metadata.name, namespace=rel.namespace)))

    rel.reconcile_until(lambda: every_shard_done(controller), 600, "every shard committed after the eviction")
    (job,) = rel.jobs()  # the same Job: the eviction was no failed attempt
    assert job["metadata"]["labels"]["featx.io/attempt"] == "1" and not rel.events("retry")
    wait_until(lambda: any(c["type"] == "Complete" and c["status"] == "True"
                           for c in (rel.jobs()[0].get("status") or {}).get("conditions") or []), 120, "Complete")
    status = rel.jobs()[0]["status"]
    assert status.get("failedIndexes", "") == "" and status["completedIndexes"] == "0-3"
    assert status.get("failed", 0) == 0  # the evicted pod is not counted as a failure at all
    pods = core.list_namespaced_pod(rel.namespace, label_selector=selector).items
    assert held.metadata.name not in {p.metadata.name for p in pods}  # shard 2 ran in a new pod
