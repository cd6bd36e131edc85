""""Done" means "what this run would produce": a committed file made from other rows, caption,
init, seed or format is ``stale`` (``featx status``), redone by ``featx extract`` (the old file
stays committed until the new one commits) and by the controller, which predicts the identity its
Job's ``featx extract`` records. Local data sets are named by folder and path, so two folders of
the same name never share files."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import featx
from featx.catalog import get_spec
from featx.catalog.spec import ModelSpec
from featx.cli.main import build_parser
from featx.data import load_rows
from featx.data.sample import build_sample
from featx.extract.runner import ExtractOptions
from featx.kube.config import RunConfig
from featx.kube.jobs import extract_args
from featx.pipeline.request import RunRequest
from featx.pipeline.runner import RunOptions, Runner
from featx.plan.sizing import GpuClass, Sizing
from featx.store.local import LocalStore
from featx.store.records import RunIdentity
from tests.helpers import run_cli

GPT2, VIT = "featx-smoke/gpt2", "featx-smoke/vit"
SIZING = Sizing(GpuClass("cpu", 4096, resource=""), 1, "float32", None, None, 0, 0, "test")
FILE = Path("featx-sample/default/featx-smoke_gpt2_pool-avg.pt")


def extract(out: Path, *more: str):
    return run_cli("extract", "--models", GPT2, "--dataset", "featx-sample", "--output_dir", str(out),
                   "--num_workers", "0", *more)


def status(out: Path, *more: str) -> dict:
    r = run_cli("status", "--models", GPT2, "--dataset", "featx-sample", "--output_dir", str(out), "--json", *more)
    assert r.code == 0, r.err
    (row,) = json.loads(r.out)
    return row


def test_a_subset_run_is_stale_for_a_full_run_and_is_redone(tmp_path):
    """The issue's case: 8 rows committed, then the same command without --num_samples."""
    assert extract(tmp_path, "--num_samples", "8").code == 0
    assert status(tmp_path, "--num_samples", "8")["state"] == "done"
    row = status(tmp_path)
    assert row["state"] == "stale" and "num_samples: 8 -> none" in row["reason"]
    table = run_cli("status", "--models", GPT2, "--dataset", "featx-sample", "--output_dir", str(tmp_path))
    assert "stale" in table.out and "stale=1" in table.out

    again = extract(tmp_path)
    assert again.code == 0 and "committed" in again.out and "skipped" not in again.out
    assert torch.load(tmp_path / FILE, weights_only=True)["feats"].shape[0] == 64
    assert status(tmp_path)["state"] == "done"
    assert extract(tmp_path).out.count("skipped") == 1  # now the same run skips


@pytest.mark.parametrize("first,second,field", [
    ((), ("--caption_idx", "1"), None),  # another file name (_cid-1): nothing to compare, just missing
    (("--init", "random", "--seed", "1"), ("--init", "random", "--seed", "2"), "seed: 1 -> 2"),
    ((), ("--format", "safetensors"), "format: pt -> safetensors"),
])
def test_options_that_change_the_bytes_make_a_file_stale(tmp_path, first, second, field):
    assert extract(tmp_path, "--num_samples", "4", *first).code == 0
    row = status(tmp_path, "--num_samples", "4", *second)
    if field is None:
        assert row["state"] == "missing"
    else:
        assert row["state"] == "stale" and field in row["reason"]
    assert status(tmp_path, "--num_samples", "4", *first)["state"] == "done"


def test_a_redo_in_another_format_leaves_no_file_of_the_old_run(tmp_path):
    """The reference's readers open `{stem}.pt` by path: after a redo as safetensors (over other
    rows), no `.pt` of the old run may stay beside it, and back again."""
    pt, st = tmp_path / FILE, tmp_path / FILE.with_suffix(".safetensors")
    assert extract(tmp_path, "--num_samples", "4").code == 0 and pt.exists()
    assert extract(tmp_path, "--format", "safetensors").code == 0
    assert (pt.exists(), st.exists()) == (False, True)
    assert status(tmp_path, "--format", "safetensors")["state"] == "done"
    assert featx.load(GPT2, str(tmp_path), dataset="featx-sample", fmt="safetensors").feats.shape[0] == 64
    assert extract(tmp_path, "--num_samples", "4").code == 0
    assert (pt.exists(), st.exists()) == (True, False)
    assert torch.load(pt, weights_only=True)["feats"].shape[0] == 4


def test_a_failed_redo_leaves_the_old_file_committed(tmp_path, monkeypatch):
    assert extract(tmp_path, "--num_samples", "8").code == 0
    before = (tmp_path / FILE).read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("featx.pipeline.runner.extract_rows", boom)
    r = extract(tmp_path)
    assert r.code == 1 and "disk on fire" in r.out
    assert (tmp_path / FILE).read_bytes() == before
    row = status(tmp_path, "--num_samples", "8")
    assert row["state"] == "done" and row["attempts"] == 1  # still valid; the failure is on record
    assert featx.load(GPT2, str(tmp_path), dataset="featx-sample").feats.shape[0] == 8


def test_identity_compares_only_what_the_asker_knows():
    spec = get_spec(GPT2)
    sample = RunRequest("featx-sample")
    full = sample.identity(spec, rows_fingerprint="a" * 64, num_rows=64, compute_dtype="float32")
    controller = sample.identity(spec)  # no rows loaded, no device
    assert controller.differences(full) == []
    assert full.differences(RunIdentity(**{**asdict(full), "rows_fingerprint": "b" * 64})) == [
        "rows_fingerprint: bbbbbbbbbbbb -> aaaaaaaaaaaa"]
    assert full.differences(RunIdentity(**{**asdict(full), "compute_dtype": "bfloat16"})) == [
        "compute_dtype: bfloat16 -> float32"]
    # a pretrained model's seed changes nothing; a random one's does
    pretrained = ModelSpec(id="org/m", modality="language", family="t")
    assert RunRequest("prh", seed=1).identity(pretrained) == RunRequest("prh", seed=2).identity(pretrained)
    assert RunRequest("prh", init="random", seed=1).identity(pretrained) != \
        RunRequest("prh", init="random").identity(pretrained)
    # --qlora quantises language models only, so it is not part of a vision model's identity
    assert RunRequest("prh", qlora=True).identity(get_spec(VIT)).qlora is False
    assert RunRequest("prh", qlora=True).identity(spec).qlora is True


@pytest.mark.parametrize(("extra_args", "parsed"), [
    (["--init", "random", "--seed", "7", "--format", "safetensors"], ("random", 7, "safetensors", False)),
    (["--qlora"], ("pretrained", 0, "pt", True)),  # the chart's qlora is off; the Job's flag still counts
])
def test_the_controller_predicts_what_its_jobs_record(sample_rows, extra_args, parsed):
    """The Job's arguments, parsed by the real CLI, give the runner an identity the controller's
    desired identity matches; with nothing stale, the controller would loop."""
    config = RunConfig.from_dict({
        "release": "r", "fullname": "r-featx", "modelset": [GPT2, VIT], "dataset": "featx-sample", "subset": None,
        "captionIdx": 1, "numSamples": 16, "qlora": False, "store": "s3://b/f", "concurrency": 1, "attempts": 1,
        "extraArgs": extra_args,
        "gpuClasses": [{"name": "cpu", "memoryMiB": 4096, "resource": ""}], "jobTemplate": {}})
    rows = load_rows("featx-sample", None, 1, 16)
    for d in config.desired():
        args = build_parser().parse_args(["extract", *extract_args(config, d, SIZING, 1)])
        assert (args.num_samples, args.init, args.seed, args.format, args.qlora) == (16, *parsed)
        request = RunRequest.from_args(args)
        runner = Runner(LocalStore("/nonexistent"), rows, request, RunOptions(ExtractOptions(device="cpu")))
        assert d.identity.differences(runner.identity(d.spec)) == []
        assert request.key(d.spec) == d.key
        other = replace(request, num_samples=8)  # a run over other rows: the controller sees it stale
        rows8 = load_rows("featx-sample", None, 1, 8)
        assert d.identity.differences(Runner(LocalStore("/nonexistent"), rows8, other).identity(d.spec))


def test_two_local_folders_with_one_name_never_share_files(tmp_path):
    a = build_sample(tmp_path / "a" / "images", rows=4)
    b = build_sample(tmp_path / "b" / "images", rows=5)
    out = tmp_path / "out"
    for folder in (a, b):
        r = run_cli("extract", "--models", GPT2, "--dataset", str(folder), "--output_dir", str(out), "--num_workers", "0")
        assert r.code == 0 and "committed" in r.out, r.err
    assert sorted(p.name.split("-")[0] for p in out.iterdir()) == ["images", "images"]
    assert featx.load(GPT2, str(out), dataset=str(a)).feats.shape[0] == 4
    assert featx.load(GPT2, str(out), dataset=str(b)).feats.shape[0] == 5


# Bad input, as rows of (setup, expected exit, expected stderr fragment) for the bad-input matrix.
BAD_RUN_CONFIGS = [
    (["--seed", "x"], 2, "featx: error: job.extraArgs ['--seed', 'x']: argument --seed: invalid int value: 'x'"),
    (["--format"], 2, "featx: error: job.extraArgs ['--format']: argument --format: expected one argument"),
]


@pytest.mark.parametrize("extra_args,code,message", BAD_RUN_CONFIGS)
def test_bad_identity_extra_args_are_one_line_errors(tmp_path, extra_args, code, message):
    import yaml

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump({
        "release": "r", "fullname": "r-featx", "modelset": [GPT2], "dataset": "featx-sample", "store": "s3://b/f",
        "concurrency": 1, "attempts": 1, "extraArgs": extra_args,
        "gpuClasses": [{"name": "cpu", "memoryMiB": 4096, "resource": ""}], "jobTemplate": {}}))
    r = run_cli("render", "--config", str(run_yaml))
    assert r.code == code and r.out == ""
    assert r.err.startswith(message) and r.err.count("\n") == 1
