"""One run request, one policy: ``featx extract`` and the controller build the same ``RunRequest``
and refuse the same runs with the same message; ``--qlora`` quantises the language models of a run
and leaves its vision models as they are (the reference's meaning); the failure policy is one
table that the runner's exit codes, the Job's podFailurePolicy and the reconciler all read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import featx
from featx.errors import POLICIES, UsageError, policy_for_exit
from featx.kube.config import RunConfig
from featx.kube.jobs import extract_args, render_job
from featx.kube.observe import ObservedJob
from featx.kube.reconcile import classify
from featx.plan.sizing import GpuClass, Sizing
from tests.helpers import run_cli

GPT2, GEMMA, VIT = "featx-smoke/gpt2", "featx-smoke/gemma", "featx-smoke/vit"
SIZING = Sizing(GpuClass("cpu", 4096, resource=""), 1, "float32", None, None, 0, 0, "test")
DIR = Path("featx-sample/default")


def run_config(models: list, extra_args: list[str] = (), **values) -> RunConfig:
    return RunConfig.from_dict({
        "release": "r", "fullname": "r-featx", "modelset": models, "dataset": "featx-sample", "store": "s3://b/f",
        "concurrency": 1, "attempts": 1, "extraArgs": list(extra_args),
        "gpuClasses": [{"name": "cpu", "memoryMiB": 4096, "resource": ""}],
        "jobTemplate": {"podSpec": {"containers": [{"name": "extract"}]}}, **values})


def manifest(out: Path, stem: str) -> dict:
    return json.loads((out / DIR / f"{stem}.manifest.json").read_text())


def test_qlora_quantises_the_language_models_and_runs_the_vision_ones_as_usual(tmp_path):
    r = run_cli("extract", "--models", GEMMA, VIT, "--dataset", "featx-sample", "--qlora",
                "--output_dir", str(tmp_path), "--num_workers", "0")
    assert r.code == 0, r.err[-2000:]
    assert r.out.count("committed") == 2 and "failed" not in r.out
    assert r.err.count("--qlora quantises language models only") == 1  # said once per run
    gemma, vit = manifest(tmp_path, "featx-smoke_gemma_pool-avg"), manifest(tmp_path, "featx-smoke_vit_pool-cls")
    assert gemma["qlora"] is True and vit["qlora"] is False
    # on the CPU, the 16-wide key/value projections stay unquantised (bitsandbytes' block of 32), said so
    assert any("k_proj" in f and "unquantised" in f for f in gemma["fallbacks"])
    # the vision model's bytes are those of a run without --qlora: same file, same sha256
    plain = tmp_path / "plain"
    assert run_cli("extract", "--models", VIT, "--dataset", "featx-sample", "--output_dir", str(plain),
                   "--num_workers", "0").code == 0
    assert manifest(plain, "featx-smoke_vit_pool-cls")["sha256"] == vit["sha256"]
    # and a plain status of the vision model is done (qlora is not part of its identity)
    s = run_cli("status", "--models", VIT, "--dataset", "featx-sample", "--output_dir", str(tmp_path), "--json")
    assert json.loads(s.out)[0]["state"] == "done"


def test_the_vision_job_of_a_qlora_release_succeeds(tmp_path):
    """``job.extraArgs: [--qlora]`` lands on every Job; the rendered vision Job's arguments, run by
    the real CLI, commit the model unquantised."""
    config = run_config([GPT2, VIT], ["--qlora"])
    vit = next(d for d in config.desired() if d.id == VIT)
    args = extract_args(config, vit, SIZING, 1)
    args[args.index("--store") + 1] = str(tmp_path)  # the bucket of the release, here a directory
    r = run_cli("extract", *args, "--num_workers", "0")
    assert r.code == 0 and '"event": "committed"' in r.err, r.err[-2000:]  # a Job logs JSON lines
    stored = manifest(tmp_path, "featx-smoke_vit_pool-cls")
    assert stored["qlora"] is False and vit.identity.differences(featx.load(VIT, str(tmp_path),
                                                                            dataset="featx-sample").manifest) == []


@pytest.mark.parametrize("models, error", [
    (["org/a_b", "org_a/b"], "org/a_b and org_a/b would write the same file"),
    ([{"id": "org/remote", "modality": "language", "family": "custom", "trust_remote_code": True}],
     "org/remote sets trust_remote_code"),
])
def test_the_controller_refuses_what_the_cli_refuses_with_the_same_line(tmp_path, models, error):
    ids = [m if isinstance(m, str) else m["id"] for m in models]
    set_file = tmp_path / "set.yaml"
    set_file.write_text(json.dumps({"name": "s", "models": models}))
    cli = run_cli("extract", "--modelset", str(set_file), "--dataset", "featx-sample", "--output_dir", str(tmp_path / "o"))
    assert cli.code == 2 and cli.err.count("\n") == 1 and error in cli.err
    with pytest.raises(UsageError) as refused:
        run_config(models).desired()
    assert cli.err.strip() == f"featx: error: {refused.value}"
    assert not (tmp_path / "o").exists() and ids  # nothing written by the refused run


def test_trust_remote_code_in_extra_args_allows_it_on_the_cluster_too():
    remote = {"id": "org/remote", "modality": "language", "family": "custom", "trust_remote_code": True}
    (d,) = run_config([remote], ["--trust_remote_code"]).desired()
    assert d.id == "org/remote"


def test_a_data_option_in_extra_args_is_refused_for_its_chart_value():
    with pytest.raises(UsageError, match="sets --num_samples: set the chart value numSamples instead"):
        run_config([GPT2], ["--num_samples", "8"])


def test_one_failure_table_drives_exit_codes_the_job_and_the_reconciler():
    config = run_config([GPT2])
    (d,) = config.desired()
    job = render_job(config, d, SIZING, 1)
    fail_job = job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"]
    assert fail_job == [p.exit_code for p in POLICIES if p.fails_job]
    for policy in POLICIES:
        observed = ObservedJob("j", d.id, d.stem, 1, "cpu", 1, "failed", "BackoffLimitExceeded", "", policy.exit_code)
        assert classify(observed, None).kind == policy.kind, policy
        assert policy_for_exit(policy.exit_code) is policy
    assert len({p.exit_code for p in POLICIES}) == len(POLICIES)


def test_a_manifest_copied_from_another_model_is_corrupt_redone_and_refused_by_load(tmp_path):
    out = tmp_path / "out"
    r = run_cli("extract", "--models", GPT2, "featx-smoke/llama", "--dataset", "featx-sample", "--output_dir",
                str(out), "--num_workers", "0")
    assert r.code == 0, r.err[-2000:]
    d = out / DIR
    original = featx.load("featx-smoke/llama", str(out), dataset="featx-sample").feats
    for ext in ("pt", "manifest.json"):  # cp gpt2's file and manifest over llama's
        (d / f"featx-smoke_llama_pool-avg.{ext}").write_bytes((d / f"featx-smoke_gpt2_pool-avg.{ext}").read_bytes())
    s = run_cli("status", "--models", GPT2, "featx-smoke/llama", "--dataset", "featx-sample", "--output_dir",
                str(out), "--json")
    rows = {row["id"]: row for row in json.loads(s.out)}
    assert rows[GPT2]["state"] == "done"
    assert rows["featx-smoke/llama"]["state"] == "corrupt" and GPT2 in rows["featx-smoke/llama"]["reason"]
    with pytest.raises(ValueError, match="copied or mis-synced"):
        featx.load("featx-smoke/llama", str(out), dataset="featx-sample")
    r = run_cli("extract", "--models", GPT2, "featx-smoke/llama", "--dataset", "featx-sample", "--output_dir",
                str(out), "--num_workers", "0")
    assert r.code == 0 and r.out.count("committed") == 1 and r.out.count("skipped") == 1
    again = featx.load("featx-smoke/llama", str(out), dataset="featx-sample")
    assert again.manifest.model_id == "featx-smoke/llama" and torch.equal(again.feats, original)


def test_a_manifest_naming_another_model_at_the_right_place_is_corrupt(tmp_path):
    """Even with its data key edited to fit, a manifest of another model is not this model's."""
    out = tmp_path / "out"
    assert run_cli("extract", "--models", GPT2, "--dataset", "featx-sample", "--output_dir", str(out),
                   "--num_workers", "0").code == 0
    path = out / DIR / "featx-smoke_gpt2_pool-avg.manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "model_id": "featx-smoke/llama"}))
    s = run_cli("status", "--models", GPT2, "--dataset", "featx-sample", "--output_dir", str(out), "--json")
    assert json.loads(s.out)[0]["state"] == "corrupt"
    with pytest.raises(ValueError, match="holds features of featx-smoke/llama"):
        featx.load(GPT2, str(out), dataset="featx-sample")


def test_the_data_set_name_is_computed_without_the_disk(tmp_path, monkeypatch):
    """The controller and a Job name a local data set alike: from the path as written."""
    from featx.pipeline.request import RunRequest

    folder = tmp_path / "images"
    before = RunRequest(str(folder)).naming
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    assert RunRequest(str(folder)).naming == before
    assert RunRequest(str(tmp_path / "link")).naming[0].startswith("link-")
    assert RunRequest("prh").naming == ("minhuh/prh", "wit_1024")
