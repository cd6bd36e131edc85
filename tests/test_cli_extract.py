"""`featx extract` end to end on the offline sample data: files, names, skip/redo, failures,
bad input (one line, non-zero exit, no partial output)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from featx.catalog import load_modelset
from tests.helpers import FEATX, kill_mid_extraction, run_cli

SMOKE = load_modelset("smoke").models
SUBDIR = Path("featx-sample/default")


def reference_filename(output_dir, dataset, subset, model_name, pool=None, prompt=None, caption_idx=None) -> str:
    """platonic-rep's utils.to_feature_filename, re-stated from its documented behaviour."""
    save_name = f"{model_name.replace('/', '_')}"
    if pool:
        save_name += f"_pool-{pool}"
    if prompt:
        save_name += f"_prompt-{prompt}"
    if caption_idx:
        save_name += f"_cid-{caption_idx}"
    return os.path.join(output_dir, dataset, subset, save_name + ".pt")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    result = run_cli("extract", "--modelset", "smoke", "--dataset", "featx-sample", "--output_dir", str(out),
                     "--num_workers", "0")
    return out, result


def test_smoke_modelset_writes_one_reference_named_file_per_model(smoke_run):
    out, result = smoke_run
    assert result.code == 0, result.err[-2000:]
    for spec in SMOKE:
        pool = spec.pool_for(None)  # avg for language models and convnets, cls for ViTs
        assert pool == ("cls" if spec.modality == "vision" and spec.class_token else "avg")
        path = Path(reference_filename(str(out), "featx-sample", "default", spec.id, pool=pool))
        assert path.is_file(), path
        data = torch.load(path, weights_only=True)
        keys = {"feats", "num_params", "mask", "loss", "bpb"} if spec.modality == "language" else {"feats", "num_params"}
        assert set(data) == keys
        feats = data["feats"]
        layers = feats if isinstance(feats, list) else list(feats.unbind(1))
        assert {t.shape[0] for t in layers} == {64} and data["num_params"] > 0
        manifest = json.loads(path.with_name(path.name.removesuffix(".pt") + ".manifest.json").read_text())
        if isinstance(feats, list):  # convnets: the reference's list form, one [N, C_l] per stage
            assert manifest["shape"] == [64, len(feats)] and manifest["layer_shapes"] == [list(t.shape) for t in feats]
        else:
            assert manifest["shape"] == list(feats.shape) and manifest["layer_shapes"] == []
        assert manifest["num_rows"] == 64
        assert manifest["model_id"] == spec.id and manifest["pool"] == pool
        for field in ("sha256", "rows_fingerprint", "featx_version", "device", "extraction", "dataset"):
            assert manifest[field]
    assert len(list((out / SUBDIR).glob("*.pt"))) == len(SMOKE)
    assert "featx-smoke/dinov2" in result.out and "committed" in result.out


def test_second_run_skips_everything_and_force_remake_redoes(smoke_run):
    out, _ = smoke_run
    path = out / SUBDIR / "featx-smoke_llama_pool-avg.pt"
    before = path.stat().st_mtime_ns
    again = run_cli("extract", "--modelset", "smoke", "--dataset", "featx-sample", "--output_dir", str(out))
    assert again.code == 0 and again.out.count("skipped") == len(SMOKE)
    assert path.stat().st_mtime_ns == before
    redo = run_cli("extract", "--models", "featx-smoke/llama", "--dataset", "featx-sample", "--output_dir", str(out),
                   "--force_remake")
    assert redo.code == 0 and "committed" in redo.out and path.stat().st_mtime_ns != before


def test_altered_file_is_reported_corrupt_and_re_extracted(smoke_run):
    out, _ = smoke_run
    path = out / SUBDIR / "featx-smoke_gpt2_pool-avg.pt"
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"0123456789")
    status = run_cli("status", "--modelset", "smoke", "--dataset", "featx-sample", "--output_dir", str(out), "--json")
    states = {r["id"]: r["state"] for r in json.loads(status.out)}
    assert states["featx-smoke/gpt2"] == "corrupt" and states["featx-smoke/llama"] == "done"
    redo = run_cli("extract", "--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--output_dir", str(out))
    assert redo.code == 0 and "committed" in redo.out
    assert torch.load(path, weights_only=True)["feats"].shape[0] == 64


def test_caption_idx_and_num_samples_are_honoured(tmp_path, sample_rows):
    r = run_cli("extract", "--models", "featx-smoke/llama", "featx-smoke/vit", "--dataset", "featx-sample",
                "--caption_idx", "1", "--num_samples", "10", "--output_dir", str(tmp_path), "--num_workers", "0")
    assert r.code == 0, r.err
    lang = tmp_path / SUBDIR / "featx-smoke_llama_pool-avg_cid-1.pt"
    vis = tmp_path / SUBDIR / "featx-smoke_vit_pool-cls.pt"  # vision files carry no caption index
    assert torch.load(lang, weights_only=True)["feats"].shape[0] == 10
    assert torch.load(vis, weights_only=True)["feats"].shape[0] == 10
    manifest = json.loads((tmp_path / SUBDIR / "featx-smoke_llama_pool-avg_cid-1.manifest.json").read_text())
    assert manifest["caption_idx"] == 1


def test_safetensors_format(tmp_path):
    from featx.store.formats import read_tensors

    r = run_cli("extract", "--models", "featx-smoke/pythia", "--dataset", "featx-sample", "--num_samples", "5",
                "--format", "safetensors", "--output_dir", str(tmp_path))
    assert r.code == 0, r.err
    data = read_tensors(tmp_path / SUBDIR / "featx-smoke_pythia_pool-avg.safetensors")
    assert data["feats"].shape == (5, 3, 64) and data["num_params"] > 0 and data["loss"].dim() == 0


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("model_id", ["featx-smoke/resnet", "featx-smoke/convnext"])
def test_convnet_layers_of_different_widths_load_back_verified(tmp_path, sample_rows, model_id, fmt):
    import featx
    from featx.catalog import get_spec
    from featx.extract.loading import load_vision
    from tests.test_extract_vision import hooked_stage_outputs

    r = run_cli("extract", "--models", model_id, "featx-smoke/vit", "--dataset", "featx-sample",
                "--num_samples", "6", "--format", fmt, "--output_dir", str(tmp_path), "--num_workers", "0")
    assert r.code == 0, r.err
    got = featx.load(model_id, str(tmp_path), dataset="featx-sample", fmt=fmt)
    loaded = load_vision(get_spec(model_id), "random", "cpu")  # the same seed as the run: the same weights
    widths = [f["num_chs"] for f in loaded.model.feature_info]
    assert got.is_list and got.manifest.pool == "avg"
    assert [tuple(t.shape) for t in got.feats] == [(6, c) for c in widths]
    assert got.manifest.layer_shapes == [[6, c] for c in widths] and got.manifest.shape == [6, len(widths)]
    assert [t.data_ptr() for t in got.layers] == [t.data_ptr() for t in got.feats]
    x = torch.stack([loaded.transform(sample_rows.images[i]) for i in range(6)])
    for stored, stage in zip(got.feats, hooked_stage_outputs(loaded.model, x)):
        torch.testing.assert_close(stored, stage.mean((2, 3)), rtol=1e-4, atol=1e-5)
    vit = featx.load("featx-smoke/vit", str(tmp_path), dataset="featx-sample", fmt=fmt)
    assert not vit.is_list and vit.feats.shape == (6, 2, 48)  # uniform width: stacked, as before
    torch.testing.assert_close(torch.stack(vit.layers, 1), vit.feats)
    data = tmp_path / SUBDIR / f"{model_id.replace('/', '_')}_pool-avg.{fmt}"
    data.write_bytes(data.read_bytes()[:-8] + bytes(8))
    with pytest.raises(ValueError, match="sha256"):
        featx.load(model_id, str(tmp_path), dataset="featx-sample", fmt=fmt)


def test_cls_for_a_model_without_class_token_is_refused_before_any_work(tmp_path):
    r = run_cli("extract", "--models", "featx-smoke/vit", "featx-smoke/resnet", "--pool", "cls",
                "--dataset", "featx-sample", "--output_dir", str(tmp_path / "out"))
    lines = [line for line in r.err.splitlines() if line.startswith("featx: error:")]
    assert r.code == 2 and len(lines) == 1 and "featx-smoke/resnet has no class token" in lines[0], r.err
    assert "--pool avg" in lines[0] and not (tmp_path / "out").exists()


def test_local_directory_model(tmp_path):
    from featx.catalog import get_spec
    from featx.extract.loading import load_language

    loaded = load_language(get_spec("featx-smoke/mistral"), "random", "cpu")
    model_dir = tmp_path / "my-mistral"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    r = run_cli("extract", "--models", str(model_dir), "--dataset", "featx-sample", "--num_samples", "4",
                "--output_dir", str(tmp_path / "out"))
    assert r.code == 0, r.err
    feats = torch.load(tmp_path / "out" / SUBDIR / "my-mistral_pool-avg.pt", weights_only=True)["feats"]
    assert feats.shape == (4, 3, 64)


def test_failing_model_among_good_ones(tmp_path):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    r = run_cli("extract", "--models", "featx-smoke/gpt2", str(bad), "featx-smoke/vit", "--dataset", "featx-sample",
                "--num_samples", "4", "--output_dir", str(tmp_path / "out"), "--num_workers", "0")
    assert r.code == 3  # permanent failure: retrying cannot help
    files = sorted(p.name for p in (tmp_path / "out" / SUBDIR).iterdir())
    assert "featx-smoke_gpt2_pool-avg.pt" in files and "featx-smoke_vit_pool-cls.pt" in files
    assert not any(f.startswith("not-a-model") and f.endswith((".pt", ".manifest.json")) for f in files)
    failure = json.loads((tmp_path / "out" / SUBDIR / "not-a-model_pool-avg.failure.json").read_text())
    assert failure["kind"] == "permanent" and failure["attempt"] == 1 and "not supported" in failure["reason"]
    assert "failed" in r.out and "not-a-model" in r.out  # summary table
    status = run_cli("status", "--models", "featx-smoke/gpt2", str(bad), "--dataset", "featx-sample",
                     "--num_samples", "4", "--output_dir", str(tmp_path / "out"), "--json")
    assert [s["state"] for s in json.loads(status.out)] == ["done", "failed"]


def test_hub_model_missing_from_the_offline_cache_is_permanent(tmp_path):
    r = run_cli("extract", "--models", "someone/missing-model", "--dataset", "featx-sample", "--num_samples", "2",
                "--output_dir", str(tmp_path))
    assert r.code == 3 and "HF_HUB_OFFLINE=1" in r.out
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("error, kind, text", [
    (OSError("We couldn't connect to 'https://huggingface.co' to load the files"), "TransientError", "cannot reach the hub"),
    (OSError("someone/x is not a local folder and is not a valid model identifier listed on the hub"), "PermanentError", "not found"),
    (OSError("You are trying to access a gated repo. 401 Client Error"), "PermanentError", "set HF_TOKEN"),
    (ValueError("The checkpoint has model type `foo` but Transformers does not recognize this architecture"), "PermanentError", "not supported"),
])
def test_load_errors_are_classified_with_the_fix(monkeypatch, error, kind, text):
    from featx.extract.loading import classify_load_error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = classify_load_error("someone/x", error)
    assert type(out).__name__ == kind and text in str(out)


@pytest.mark.parametrize("args, message", [
    (["--modelset", "nope"], "unknown modelset 'nope'"),
    (["--models", "featx-smoke/vit", "--pool", "last"], "--pool last is not defined for vision"),
    (["--models", "featx-smoke/gpt2", "--dataset", "/no/such/dir"], "does not exist"),
    (["--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--caption_idx", "7"], "out of range"),
    (["--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--num_samples", "0"], "positive"),
    (["--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--batch_size", "-1"], "positive"),
    (["--models", "featx-smoke/gpt2", "--dataset", "prh"], "cannot reach the Hugging Face hub"),
    (["--models", "featx-smoke/gpt2", "--store", "x", "--output_dir", "y"], "either --store or --output_dir"),
    (["--models", "featx-smoke/gpt2", "--pool", "mean"], "invalid choice"),
    (["--models", "Bad Name!"], "neither an HF repo id"),
])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    argv = ["extract", *args]
    if "--output_dir" not in args and "--store" not in args:
        argv += ["--output_dir", str(tmp_path / "out")]
    r = run_cli(*argv)
    assert r.code != 0
    lines = [line for line in r.err.splitlines() if line.startswith("featx: error:")]
    assert len(lines) == 1 and message in lines[0], r.err
    assert "Traceback" not in r.err
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.manifest.json"))


def test_killed_run_leaves_nothing_done_and_the_next_run_completes(tmp_path):
    out = tmp_path / "out"
    cmd = [FEATX, "extract", "--models", "featx-smoke/gpt2", "featx-smoke/dinov2", "--dataset", "featx-sample",
           "--output_dir", str(out), "--num_workers", "0", "--batch_size", "1", "--log_format", "json"]
    kill_mid_extraction(cmd, "featx-smoke/dinov2")
    r = run_cli("status", "--models", "featx-smoke/gpt2", "featx-smoke/dinov2", "--dataset", "featx-sample",
                "--output_dir", str(out), "--json")
    states = [s["state"] for s in json.loads(r.out)]
    assert states == ["done", "missing"]
    assert not (out / SUBDIR / "featx-smoke_dinov2_pool-cls.pt").exists()
    again = run_cli("extract", "--models", "featx-smoke/gpt2", "featx-smoke/dinov2", "--dataset", "featx-sample",
                    "--output_dir", str(out), "--num_workers", "0")
    assert again.code == 0 and "skipped" in again.out and again.out.count("committed") == 1
