"""GPU sizing: every model of every modelset gets a class; big models get several devices; the
choice is monotonic in the estimate; OOM escalates; the chart's classes are featx's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from featx.catalog import load_modelset, resolve
from featx.catalog.spec import ModelSpec
from featx.plan.memory import MIN_TOKEN_BUDGET, bytes_per_token, peak_bytes
from featx.plan.sizing import (MARGIN, GpuClass, choose, escalate, image_tokens, load_classes, shape_of,
                               size_on)
from featx.kube.sizing_table import sizing_rows

CLASSES = load_classes()
EXHAUSTIVE = list(load_modelset("exhaustive").models)
CHART_VALUES = Path(__file__).resolve().parents[1] / "helm" / "featx" / "values.yaml"


def lm(params: int, hidden: int = 4096, layers: int = 32, vocab: int = 32000) -> ModelSpec:
    return ModelSpec(id=f"test/lm-{params}", modality="language", family="t", params=params, hidden=hidden,
                     layers=layers, vocab=vocab)


def test_chart_classes_equal_the_defaults():
    values = yaml.safe_load(CHART_VALUES.read_text())
    defaults = yaml.safe_load((Path(__file__).resolve().parents[1] / "featx/plan/gpu_classes.yaml").read_text())
    assert values["gpuClasses"] == defaults["gpuClasses"]


@pytest.mark.parametrize("spec", EXHAUSTIVE, ids=lambda s: s.id)
def test_every_exhaustive_model_fits_and_its_estimate_is_within_the_class(spec):
    s = choose(spec, CLASSES)
    assert s.fits, s.reason
    assert s.gpu_class.enabled
    assert s.est_peak_bytes <= s.gpu_class.memory_bytes * MARGIN
    if spec.modality == "language":
        assert s.token_budget >= MIN_TOKEN_BUDGET
    else:
        assert s.gpus == 1 and s.token_budget is None and s.batch_size >= 1


def test_seventy_billion_models_get_several_gpus():
    seventy = [s for s in EXHAUSTIVE if s.params > 68e9]
    assert seventy
    for spec in seventy:
        s = choose(spec, CLASSES)
        assert s.gpus >= 2, (spec.id, s.reason)
        assert f"{s.gpus}x" in s.reason


def test_one_gpu_is_preferred_when_a_class_holds_the_model():
    # llama-65b fits one H200 (bf16 ~122 GiB) -> no splitting over two 80 GB devices
    spec = next(s for s in EXHAUSTIVE if s.id == "huggyllama/llama-65b")
    s = choose(spec, CLASSES)
    assert (s.class_name, s.gpus) == ("h200-141gb", 1)


def test_choice_is_monotonic_in_the_estimate():
    """A model needing at least as much (fixed bytes and bytes per token) never gets less memory."""
    sized = []
    for spec in EXHAUSTIVE:
        if spec.modality != "language":
            continue
        shape = shape_of(spec)
        s = choose(spec, CLASSES)
        sized.append((peak_bytes(shape, "bfloat16", 0), bytes_per_token(shape, "bfloat16"), s.total_mib, spec.id))
    for a in sized:
        for b in sized:
            if a[0] <= b[0] and a[1] <= b[1]:
                assert a[2] <= b[2], (a, b)


def test_growing_model_walks_up_the_classes():
    totals = [choose(lm(int(p * 1e9)), CLASSES).total_mib for p in (0.1, 1, 7, 13, 30, 65, 70, 140, 400)]
    assert totals == sorted(totals)
    assert choose(lm(int(0.1e9)), CLASSES).class_name == "l4-24gb"


def test_qlora_needs_less():
    spec = next(s for s in EXHAUSTIVE if s.id == "meta-llama/Llama-2-70b-hf")
    full, q = choose(spec, CLASSES), choose(spec, CLASSES, qlora=True)
    assert q.dtype == "nf4" and q.weight_bytes < full.weight_bytes / 3
    assert q.total_mib < full.total_mib


def test_nothing_fits_says_why():
    small = (GpuClass("tiny", 4096, max_per_node=1),)
    s = choose(lm(int(70e9)), small)
    assert not s.fits and s.gpus == 0
    assert "no enabled GPU class" in s.reason and "--qlora" in s.reason


def test_disabled_classes_are_never_chosen():
    classes = tuple(GpuClass(c.name, c.memory_mib, c.resource, c.max_per_node, c.memory_label, c.node_selector,
                             c.tolerations, enabled=c.enabled or c.name == "mig-1g.10gb") for c in CLASSES)
    tiny = ModelSpec(id="gpt2", modality="language", family="gpt2", params=124_000_000, hidden=768, layers=12, vocab=50257)
    assert choose(tiny, CLASSES).class_name == "l4-24gb"
    assert choose(tiny, classes).class_name == "mig-1g.10gb"


@pytest.mark.parametrize("failed,gpus,expect", [
    ("l4-24gb", 1, ("a100-40gb", 1)),
    ("a100-40gb", 1, ("h100-80gb", 1)),
    ("h100-80gb", 1, ("h200-141gb", 1)),
])
def test_oom_escalates_to_the_next_larger_option(failed, gpus, expect):
    spec = lm(int(1e9), hidden=2048, layers=16)
    s = escalate(spec, CLASSES, failed, gpus)
    assert (s.class_name, s.gpus) == expect
    assert s.reason.startswith(f"out of memory on {gpus}x {failed}")


def test_oom_on_the_largest_single_gpu_splits_then_runs_out():
    spec = lm(int(1e9))
    s = escalate(spec, CLASSES, "h200-141gb", 1)
    assert s.fits and s.gpus == 2 and s.gpu_class.memory_mib >= 143771
    s = escalate(spec, CLASSES, "h200-141gb", 8)
    assert not s.fits


def test_vision_models_do_not_split_and_use_image_tokens():
    vit = next(s for s in EXHAUSTIVE if s.id.startswith("vit_giant_patch14_dinov2"))
    assert image_tokens(vit) == 37 * 37 + 1
    s = escalate(vit, CLASSES, "h200-141gb", 1)
    assert not s.fits  # vision models never get several devices


def test_convnets_are_priced_by_their_largest_feature_map():
    from featx.catalog import get_spec
    from featx.plan.memory import bytes_per_token, peak_bytes

    resnet = get_spec("featx-smoke/resnet")  # its image_tokens are checked against timm in test_extract_vision
    assert image_tokens(resnet) == resnet.image_tokens
    s = choose(resnet, CLASSES)
    shape = shape_of(resnet)
    per_image = resnet.image_tokens * bytes_per_token(shape, "float32")
    fixed = peak_bytes(shape, "float32", 0)
    assert s.fits and s.est_peak_bytes == fixed + s.batch_size * per_image
    assert s.batch_size == min(16384 // resnet.image_tokens, (int(s.gpu_class.memory_bytes * MARGIN) - fixed) // per_image)


def test_size_on_keeps_the_class_of_the_last_attempt():
    spec = lm(int(1e9))
    assert size_on(spec, CLASSES, "h100-80gb", 1).class_name == "h100-80gb"
    assert size_on(spec, CLASSES, "gone-class", 1).class_name == "l4-24gb"


def test_sizing_table_rows():
    rows = sizing_rows(resolve("custom"))
    assert rows and set(rows[0]) >= {"id", "params", "dtype", "weights_gib", "est_peak_gib", "gpu_class", "gpus",
                                     "token_budget"}
    assert all(r["gpu_class"] != "-" for r in rows)


def test_models_sizing_cli(capsys):
    import json

    from featx.cli.main import main

    assert main(["models", "--modelset", "exhaustive", "--sizing", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(EXHAUSTIVE) and all(r["gpu_class"] != "-" for r in rows)
    assert main(["models", "--modelset", "smoke", "--sizing"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[:3] == ["id", "params", "dtype"] and len(lines) == 1 + len(load_modelset("smoke").models)
