"""Chart values read in Python (no helm needed): ``--set`` syntax, the schema subset, cross-value
checks, and ``featx render`` / ``featx status`` output. tests/test_kube_chart.py checks the same
values against the real ``helm template``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from featx.catalog import builtin_modelsets, load_modelset
from featx.cli.main import main
from featx.errors import UsageError
from featx.data.datasets import dataset_naming
from featx.kube.config import RunConfig
from featx.store.keys import pool_for
from featx.kube.naming import DNS1123_LABEL, LABEL_VALUE
from featx.kube.observe import ObservedJob
from featx.kube.status import annotate
from featx.kube.values import CHART_DIR, SUPPORTED_KEYWORDS, apply_set, load_values, merge, run_config

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())


def _classes(**changes) -> list[dict]:
    """The chart's gpuClasses with ``{index: {key: value}}`` changes (lists are replaced whole by
    helm, so a values file gives the full list)."""
    classes = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["gpuClasses"]
    for i, change in changes.items():
        classes[int(i[1:])].update(change)
    return classes


# name -> (a values file's content, a fragment every error message names); shared with the helm test
BAD_VALUES = {
    "concurrency zero": ({"concurrency": 0}, "concurrency"),
    "attempts negative": ({"attempts": -1}, "attempts"),
    "unknown modality": ({"modality": "audio"}, "modality"),
    "unknown modelset": ({"modelset": "everything"}, "modelset"),
    "empty inline modelset": ({"modelset": []}, "modelset"),
    "pool not a pool": ({"pool": "mean"}, "pool"),
    "memory not a number": ({"gpuClasses": _classes(c2={"memoryMiB": "lots"})}, "memoryMiB"),
    "bad bucket name": ({"s3": {"bucket": "Bad_Bucket"}}, "bucket"),
    "endpoint not a URL": ({"s3": {"endpoint": "minio:9000"}}, "endpoint"),
    "unknown class key": ({"gpuClasses": _classes(c0={"memory": 5})}, "memory"),
    "negative caption index": ({"captionIdx": -1}, "captionIdx"),
    "duplicate class names": ({"gpuClasses": _classes(c3={"name": "l4-24gb"})}, "used twice"),
    "no class enabled": ({"gpuClasses": _classes(c2={"enabled": False}, c3={"enabled": False}, c4={"enabled": False},
                                                 c5={"enabled": False})}, "no class is enabled"),
    "MIG split over several slices": ({"gpuClasses": _classes(c1={"maxPerNode": 2})}, "MIG slice"),
}


def test_schema_uses_only_keywords_the_python_checker_knows():
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("properties", "definitions"):
                    assert k in SUPPORTED_KEYWORDS, k
                    walk(v)
                else:
                    for sub in v.values():
                        walk(sub)
        elif isinstance(node, list):
            for x in node:
                walk(x)
    walk(SCHEMA)


def test_schema_modelset_names_are_the_builtin_ones():
    names = SCHEMA["properties"]["modelset"]["anyOf"][0]["enum"]
    assert sorted(names) == sorted(builtin_modelsets())


def test_defaults_are_valid():
    load_values()


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_are_refused(name, tmp_path):
    override, fragment = BAD_VALUES[name]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(override))
    with pytest.raises(UsageError) as e:
        load_values(files=[path])
    assert fragment in str(e.value)


def test_set_of_a_list_item_replaces_the_list_like_helm():
    # helm: --set gpuClasses[0].enabled=true makes a new one-item list (the chart's list is not edited)
    with pytest.raises(UsageError, match="gpuClasses"):
        load_values(sets=["gpuClasses[0].enabled=true"])


@pytest.mark.parametrize("expr,expect", [
    ("concurrency=5", {"c": 1, "concurrency": 5}),
    ("a.b=true,c=null", {"a": {"b": True}, "c": None}),
    ("modelset={gpt2,vit_base_patch16_224.augreg_in21k}", {"c": 1, "modelset": ["gpt2", "vit_base_patch16_224.augreg_in21k"]}),
    ("l[1].x=1", {"c": 1, "l": [None, {"x": 1}]}),
    (r"s=a\,b", {"c": 1, "s": "a,b"}),
    ("v=1.5", {"c": 1, "v": "1.5"}),
])
def test_set_syntax(expr, expect):
    assert apply_set({"c": 1}, expr) == expect


def test_set_edits_lists_from_files_and_merge_rules(tmp_path):
    f = tmp_path / "classes.yaml"
    f.write_text(yaml.safe_dump({"gpuClasses": _classes()}))
    values = load_values(files=[f], sets=["gpuClasses[0].enabled=true", "job.nodeSelector.pool=gpu", "pool=null"])
    assert values["gpuClasses"][0]["enabled"] is True and values["gpuClasses"][0]["name"] == "cpu"
    assert values["job"]["nodeSelector"] == {"pool": "gpu"}
    assert "pool" not in values
    assert merge({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]}) == {"a": {"c": 2}, "l": [3]}
    with pytest.raises(UsageError):
        apply_set({}, "novalue")


def test_values_files_merge_in_order(tmp_path):
    f1, f2 = tmp_path / "1.yaml", tmp_path / "2.yaml"
    f1.write_text("concurrency: 3\ns3: {bucket: one}\n")
    f2.write_text("s3: {prefix: p}\n")
    v = load_values(files=[f1, f2], sets=["concurrency=4"])
    assert v["concurrency"] == 4 and v["s3"]["bucket"] == "one" and v["s3"]["prefix"] == "p"
    assert v["s3"]["credentialsSecret"]["name"] == "featx-s3"  # defaults below stay
    with pytest.raises(UsageError, match="does not exist"):
        load_values(files=[tmp_path / "missing.yaml"])


def test_pool_and_dataset_naming_are_the_extractors():
    from featx.data.datasets import load_rows

    vit = next(s for s in load_modelset("exhaustive").models if s.modality == "vision")
    with pytest.raises(UsageError):
        pool_for(vit, "last")
    rows = load_rows("featx-sample", None, 0, 2)
    assert dataset_naming("featx-sample", None) == (rows.name, rows.subset)
    assert dataset_naming("prh", None) == ("minhuh/prh", "wit_1024")
    assert dataset_naming("/data/my-set", "v1") == ("my-set", "v1")


def render(capsys, *args) -> list[dict]:
    assert main(["render", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


def test_render_prints_one_job_per_model(capsys):
    docs = render(capsys, "--modelset", "smoke", "--set", "dataset=featx-sample", "--release", "r1")
    from featx.catalog import load_modelset

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
    cfg = run_config(load_values(sets=["modelset={gpt2}"]), "rel", "ns")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (doc,) = render(capsys, "--config", str(path))
    assert doc["metadata"]["namespace"] == "ns" and doc["metadata"]["name"].startswith("rel-gpt2-")


def test_render_refuses_bad_values(capsys):
    assert main(["render", "--set", "concurrency=0"]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_cpu_class_asks_for_memory_not_gpus(capsys, tmp_path):
    f = tmp_path / "cpu.yaml"
    f.write_text(yaml.safe_dump({"gpuClasses": _classes(c0={"enabled": True})}))
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


def test_run_config_round_trips_into_a_run_config():
    cfg = RunConfig.from_dict(run_config(load_values(), "featx", "default"))
    assert cfg.fullname == "featx" and cfg.store == "s3://featx-features/features"
    assert [c.name for c in cfg.classes if c.enabled] == ["l4-24gb", "a100-40gb", "h100-80gb", "h200-141gb"]
    with pytest.raises(UsageError):
        RunConfig.from_dict({"release": "x"})


def test_layering_kube_planning_does_not_import_torch_or_kubernetes():
    import subprocess
    import sys

    code = ("import sys, featx.kube.reconcile, featx.kube.controller, featx.kube.values, featx.plan.sizing, "
            "featx.kube.sizing_table, featx.kube.status; "
            "bad = [m for m in ('torch', 'kubernetes', 'boto3') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stdout + out.stderr
