"""``featx render`` output (through the real ``helm template``) and ``featx status`` rows; the
chart's own checks are in tests/test_kube_chart.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from featx.catalog import builtin_modelsets, load_modelset
from featx.cli.main import main
from featx.errors import UsageError
from featx.kube.config import RunConfig
from featx.kube.helm import CHART_DIR, render_run_config
from featx.kube.naming import DNS1123_LABEL, LABEL_VALUE
from featx.kube.observe import ObservedJob
from featx.kube.status import annotate
from tests.test_kube_chart import _classes

pytestmark = pytest.mark.usefixtures("helm")

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def test_schema_modelset_names_are_the_builtin_ones():
    names = SCHEMA["properties"]["modelset"]["anyOf"][0]["enum"]
    assert sorted(names) == sorted(builtin_modelsets())


def render(capsys, *args) -> list[dict]:
    assert main(["render", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_render_prints_one_job_per_model(capsys):
    docs = render(capsys, "--modelset", "smoke", "--set", "dataset=featx-sample", "--release", "r1")
    ids = [m.id for m in load_modelset("smoke").models]
    assert [d["metadata"]["annotations"]["featx.io/model-id"] for d in docs] == ids
    for d in docs:
        assert d["kind"] == "Job" and DNS1123_LABEL.match(d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 63
        assert all(LABEL_VALUE.match(v) for v in d["metadata"]["labels"].values())
        assert d["metadata"]["labels"]["featx.io/release"] == "r1"
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["command"] == ["featx", "extract"] and c["args"][:2] == ["--models", d["metadata"]["annotations"]["featx.io/model-id"]]
        term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        assert term["matchExpressions"][0] == {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["23033"]}
        rules = d["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "FailJob" and 3 in rules[0]["onExitCodes"]["values"]


def test_render_big_models_and_overrides(capsys):
    docs = render(capsys, "--models", "meta-llama/Llama-2-70b-hf", "gpt2", "--set", "kueue.queueName=gpu-queue",
                  "--set", "modelCache.existingClaim=hf-cache", "--set", "hfToken.secretName=hf")
    llama, gpt2 = docs
    c = llama["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert llama["metadata"]["labels"]["featx.io/gpu-class"] == "h100-80gb"
    assert llama["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" and llama["spec"]["suspend"] is True
    assert llama["metadata"]["labels"]["featx.io/modelset"] == "inline"
    vols = {v["name"]: v for v in llama["spec"]["template"]["spec"]["volumes"]}
    assert vols["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    assert "--token_budget" in c["args"]
    assert "--batch_size" not in c["args"]  # batchSize null: the token budget alone sizes language batches
    vision = render(capsys, "--models", "vit_large_patch14_dinov2.lvd142m")[0]["spec"]["template"]["spec"]["containers"][0]
    assert vision["args"][vision["args"].index("--batch_size") + 1] == str(16384 // 1370)  # 518 px: 1370 tokens
    capped = render(capsys, "--models", "gpt2", "--set", "batchSize=8")[0]["spec"]["template"]["spec"]["containers"][0]
    assert capped["args"][capped["args"].index("--batch_size") + 1] == "8"


def test_render_from_a_run_config_file(tmp_path, capsys):
    cfg = render_run_config(sets=["modelset={gpt2}"], release="rel", namespace="ns")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (doc,) = render(capsys, "--config", str(path))
    assert doc["metadata"]["namespace"] == "ns" and doc["metadata"]["name"].startswith("rel-gpt2-")


def test_render_refuses_bad_values(capsys):
    assert main(["render", "--set", "concurrency=0"]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_cpu_class_asks_for_memory_not_gpus(capsys, tmp_path):
    f = tmp_path / "cpu.yaml"
    f.write_text(yaml.safe_dump({"gpuClasses": _classes(c0={"enabled": True})}))  # helm replaces lists whole
    (doc,) = render(capsys, "--models", "gpt2", "-f", str(f))
    c = doc["spec"]["template"]["spec"]["containers"][0]
    assert doc["metadata"]["labels"]["featx.io/gpu-class"] == "cpu"
    assert "nvidia.com/gpu" not in c["resources"]["requests"]
    assert re.fullmatch(r"\d+Mi", c["resources"]["requests"]["memory"])
    assert "affinity" not in doc["spec"]["template"]["spec"]


def test_status_rows_get_job_attempt_and_phase():
    rows = [{"id": "a", "state": "missing", "reason": "", "attempts": 0, "stem": "s/a"},
            {"id": "b", "state": "failed", "reason": "", "attempts": 1, "stem": "s/b"},
            {"id": "c", "state": "done", "reason": "", "attempts": 0, "stem": "s/c"}]
    observed = [ObservedJob("ja1", "a", "s/a", 1, "l4", 1, "failed", "BackoffLimitExceeded"),
                ObservedJob("ja2", "a", "s/a", 2, "l4", 1, "running"),
                ObservedJob("jb1", "b", "s/b", 1, "l4", 1, "failed", "PodFailurePolicy", exit_code=3)]
    a, b, c = annotate(rows, observed)
    assert (a["job"], a["attempts"], a["phase"], a["state"]) == ("ja2", 2, "running", "running")
    assert (b["job"], b["phase"], b["state"], b["reason"]) == ("jb1", "failed", "failed", "PodFailurePolicy")
    assert c["job"] == "" and c["state"] == "done"


def test_helms_run_config_is_what_the_controller_reads():
    cfg = RunConfig.from_dict(render_run_config())
    assert cfg.fullname == "featx" and cfg.store == "s3://featx-features/features"
    assert [c.name for c in cfg.classes if c.enabled] == ["l4-24gb", "a100-40gb", "h100-80gb", "h200-141gb"]
    with pytest.raises(UsageError):
        RunConfig.from_dict({"release": "x"})


def test_layering_kube_planning_does_not_import_torch_or_kubernetes():
    import subprocess
    import sys

    code = ("import sys, featx.kube.reconcile, featx.kube.controller, featx.kube.helm, featx.plan.sizing, "
            "featx.kube.sizing_table, featx.kube.status; "
            "bad = [m for m in ('torch', 'kubernetes', 'boto3') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("extra, want", [
    ((), None),
    (("--set", "kueue.priorityClassName=featx-batch"), "featx-batch"),
])
def test_kueue_workload_priority_class_labels_the_job_not_its_pods(capsys, extra, want):
    """``kueue.priorityClassName`` is Kueue's ``kueue.x-k8s.io/priority-class`` label on the Job
    (a WorkloadPriorityClass); like the queue label it stays off the pods."""
    (job,) = render(capsys, "--models", "gpt2", "--set", "kueue.queueName=gpu-queue", *extra)
    assert job["metadata"]["labels"].get("kueue.x-k8s.io/priority-class") == want
    assert not any(k.startswith("kueue.x-k8s.io/") for k in job["spec"]["template"]["metadata"]["labels"])

