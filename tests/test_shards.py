"""Row shards (`--shard_rows`, `--num_shards`/`--shard_index`): a real smoke model over the offline
sample data, written to a real directory store. Sharded features equal the unsharded file's bit for
bit; a run killed mid-commit continues with only the missing shards; status counts shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import featx
from featx.features import ShardedFeatures
from featx.pipeline.shards import ShardLayout, layout_for
from tests.helpers import FEATX, hold_commit_barrier, run_cli

MODEL = "featx-smoke/gpt2"
# one row per batch: a row's padded length (hence its kernels' blocking) is then the same in a
# shard as in the whole run, so the bytes must be too (length-sorted batches of a shard differ from
# the whole run's, and CPU BLAS then rounds a few values one ulp apart: tested below with allclose)
DATA = ("--models", MODEL, "--dataset", "featx-sample", "--num_workers", "0", "--batch_size", "1")
SHARDS = Path("featx-sample/default/featx-smoke_gpt2_pool-avg")


def extract(out: Path, *extra: str):
    r = run_cli("extract", *DATA, "--output_dir", str(out), *extra)
    assert r.code == 0, r.err[-2000:]
    return r


def status(out: Path, *extra: str) -> dict:
    r = run_cli("status", "--models", MODEL, "--dataset", "featx-sample", "--output_dir", str(out), "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out)[0]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> torch.Tensor:
    out = tmp_path_factory.mktemp("whole")
    extract(out)
    assert sorted(p.name for p in (out / SHARDS.parent).iterdir()) == [
        "featx-smoke_gpt2_pool-avg.manifest.json", "featx-smoke_gpt2_pool-avg.pt"]  # small: one file, as today
    return featx.load(MODEL, str(out), dataset="featx-sample").feats


@pytest.mark.parametrize("num_shards", [1, 3, 7, 64])
def test_layout_is_datasets_contiguous_shard(num_shards):
    """Shard i holds the rows `datasets.Dataset.shard(S, i, contiguous=True)` gives."""
    from datasets import Dataset

    ds = Dataset.from_dict({"i": list(range(64))})
    layout = ShardLayout(64, num_shards)
    for i in range(num_shards):
        start, end = layout.bounds(i)
        assert list(range(start, end)) == ds.shard(num_shards, i, contiguous=True)["i"]


def test_shard_rows_bounds_every_shard_and_automatic_size():
    assert layout_for(64, 20, None).num_shards == 4
    assert all(e - s <= 20 for s, e in map(ShardLayout(64, 4).bounds, range(4)))
    assert layout_for(64, None, None, bytes_per_row=1000) is None  # 64 kB: one file
    assert layout_for(2_000_000, None, None, bytes_per_row=9 * 512 * 4).num_shards == 35  # ~1 GiB each


def test_sharded_features_equal_unsharded_bitwise(whole, tmp_path):
    extract(tmp_path, "--shard_rows", "20")
    names = sorted(p.name for p in (tmp_path / SHARDS).iterdir())
    assert names == [f"shard-0000{i}-of-00004.{ext}" for i in range(4) for ext in ("manifest.json", "pt")]
    assert not (tmp_path / f"{SHARDS}.pt").exists()
    for i in range(4):
        m = json.loads((tmp_path / SHARDS / f"shard-0000{i}-of-00004.manifest.json").read_text())
        assert (m["row_start"], m["row_end"], m["num_rows"], m["num_shards"]) == (16 * i, 16 * i + 16, 16, 4)
    view = featx.load(MODEL, str(tmp_path), dataset="featx-sample")
    assert isinstance(view, ShardedFeatures) and view.num_shards == 4 and view.num_rows == 64
    assert view.feats.dtype == torch.float32 and torch.equal(view.feats, whole)
    assert torch.equal(view.rows(10, 40), whole[10:40])
    assert torch.equal(view.shard(2).feats, whole[32:48])
    assert status(tmp_path)["state"] == "done" and status(tmp_path)["shards"] == "4/4"


def test_default_batches_agree_to_rounding(whole, tmp_path):
    r = run_cli("extract", "--models", MODEL, "--dataset", "featx-sample", "--num_workers", "0",
                "--output_dir", str(tmp_path), "--shard_rows", "20")
    assert r.code == 0, r.err[-2000:]
    sharded = featx.load(MODEL, str(tmp_path), dataset="featx-sample").feats
    torch.testing.assert_close(sharded, whole, rtol=1e-6, atol=1e-6)


def test_automatic_shards_from_feature_bytes(whole, tmp_path, monkeypatch):
    """Without shard flags a model whose features exceed FEATX_SHARD_BYTES is sharded (gpt2 smoke:
    3 states x 64 floats = 768 bytes per row, 49,152 in all; 12,288 per shard -> 4 shards of 16 rows)."""
    monkeypatch.setenv("FEATX_SHARD_BYTES", str(12_288))
    extract(tmp_path)
    view = featx.load(MODEL, str(tmp_path), dataset="featx-sample")
    assert view.num_shards == 4 and torch.equal(view.feats, whole)


def test_one_shard_per_process_then_status_counts_and_rerun_skips(whole, tmp_path):
    extract(tmp_path, "--num_shards", "4", "--shard_index", "2")
    assert [p.name for p in (tmp_path / SHARDS).glob("*.pt")] == ["shard-00002-of-00004.pt"]
    row = status(tmp_path)
    assert row["state"] == "missing" and row["shards"] == "1/4" and row["reason"].startswith("1/4 shards")
    assert "1/4 shards" in run_cli("status", "--models", MODEL, "--dataset", "featx-sample",
                                   "--output_dir", str(tmp_path)).out
    r = extract(tmp_path, "--num_shards", "4", "--log_format", "json")
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    skipped = [e for e in events if e["event"] == "skipped"]
    assert skipped and skipped[0]["shards"] == "2" and skipped[0]["reason"] == "1/4 shards already committed"
    assert sorted(e["shard"] for e in events if e["event"] == "committed") == ["1/4", "2/4", "4/4"]
    assert torch.equal(featx.load(MODEL, str(tmp_path), dataset="featx-sample").feats, whole)


def test_sigkill_mid_shard_commit_then_rerun_extracts_only_missing_shards(whole, tmp_path):
    """Killed while shard 1's data is published and its manifest not yet written (the commit
    barrier): shard 0 stands, the rerun extracts shards 1-3 only and the result equals a whole run."""
    fifo = tmp_path / "barrier"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = subprocess.Popen([FEATX, "extract", *DATA, "--output_dir", str(out), "--shard_rows", "16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FEATX_TEST_COMMIT_BARRIER": str(fifo)})
    os.close(hold_commit_barrier(fifo, proc))  # shard 0 commits
    first = out / SHARDS / "shard-00000-of-00004.manifest.json"
    while not first.exists():  # its commit has let go of the barrier
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    hold_commit_barrier(fifo, proc)  # shard 1 is mid-commit: its data published, no manifest
    proc.kill()
    proc.communicate()
    assert (out / SHARDS / "shard-00001-of-00004.pt").exists()  # killed between data and manifest
    row = status(out)
    assert row["state"] == "missing" and row["shards"] == "1/4"
    r = extract(out, "--shard_rows", "16", "--log_format", "json")
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    assert [e["shards"] for e in events if e["event"] == "skipped"] == ["0"]
    assert [e["shard"] for e in events if e["event"] == "committed"] == ["2/4", "3/4", "4/4"]
    assert torch.equal(featx.load(MODEL, str(out), dataset="featx-sample").feats, whole)
    assert not [p for p in (out / SHARDS).iterdir() if p.name.startswith(".")]  # no temporaries left


def test_sigterm_after_a_shard_then_rerun_extracts_only_missing_shards(whole, tmp_path):
    """SIGTERM (a pod's deletion or preemption) once shard 0 is committed: the run stops with exit
    143 and one line naming the shards committed; those stand, the rerun extracts the others only
    and the result equals an uninterrupted run."""
    out = tmp_path / "out"
    proc = subprocess.Popen([FEATX, "extract", *DATA, "--output_dir", str(out), "--shard_rows", "16",
                             "--log_format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("{") and json.loads(line)["event"] == "committed":
            break
    else:
        raise AssertionError("".join(seen)[-2000:])
    proc.send_signal(signal.SIGTERM)
    err = "".join(seen) + proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, err[-2000:]
    committed = [json.loads(x)["shard"] for x in err.splitlines() if x.startswith('{"') and '"committed"' in x]
    k = len(committed)
    assert 1 <= k < 4 and committed == [f"{i + 1}/4" for i in range(k)], err[-2000:]
    assert [x for x in err.splitlines() if x.startswith("featx:")] == [
        f"featx: interrupted by SIGTERM: committed nothing; {MODEL}: {k}/4 shards committed, the other {4 - k} "
        "are extracted by a rerun"], err[-2000:]
    assert sorted(p.name for p in (out / SHARDS).glob("*.manifest.json")) == [
        f"shard-{i:05d}-of-00004.manifest.json" for i in range(k)]
    assert status(out)["shards"] == f"{k}/4"
    r = extract(out, "--shard_rows", "16", "--log_format", "json")
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    assert [e["shards"] for e in events if e["event"] == "skipped"] == ["0" if k == 1 else f"0-{k - 1}"]
    assert [e["shard"] for e in events if e["event"] == "committed"] == [f"{i + 1}/4" for i in range(k, 4)]
    start = next(e for e in events if e["event"] == "start")
    assert start["store"].endswith(f"{SHARDS}/shard-NNNNN-of-00004.pt") and start["shards"] == f"{4 - k} of 4 shards of 16 rows"
    assert torch.equal(featx.load(MODEL, str(out), dataset="featx-sample").feats, whole)
    assert not [p for p in (out / SHARDS).iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.parametrize("flags, message", [
    (("--shard_rows", "0"), "--shard_rows 0: give a positive number"),
    (("--num_shards", "-2"), "--num_shards -2: give a positive number"),
    (("--shard_index", "1"), "--shard_index 1 needs --num_shards"),
    (("--num_shards", "4", "--shard_index", "4"), "--shard_index 4: give 0..3 for --num_shards 4"),
    (("--shard_rows", "8", "--num_shards", "4"), "--shard_rows and --num_shards both set the shard layout"),
    (("--num_shards", "65"), "65 shards of 64 rows would leave shards empty"),
])
def test_bad_shard_flags_are_one_line_exit_2_and_write_nothing(tmp_path, flags, message):
    r = run_cli("extract", *DATA, "--output_dir", str(tmp_path / "out"), *flags)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2 and len(lines) == 1 and message in lines[0], r.err
    assert not list((tmp_path / "out").rglob("*.pt")) if (tmp_path / "out").exists() else True


def test_controller_decide_counts_a_model_done_only_when_every_shard_is():
    """The controller's pure ``decide`` reads shards as `featx status` does: all 2 of 2 shards
    committed is done (no Job), 1 of 2 is missing (a Job, whose run extracts the missing one)."""
    from dataclasses import asdict, replace

    from featx.kube.reconcile import Create, Settings, decide
    from featx.store.records import Manifest, StoredState
    from tests.test_kube_reconcile import A, CLASSES, short

    def shard(i: int) -> tuple[str, StoredState]:
        key = A.key.shard(i, 2)
        identity = {**asdict(replace(A.identity, data_key=key.data)), "rows_fingerprint": "f" * 64, "num_rows": 512,
                    "num_shards": 2, "row_start": 512 * i, "row_end": 512 * i + 512}
        return key.stem, StoredState("done", Manifest(**identity, modality="language", sha256="0" * 64, size=1,
                                                      shape=[512, 13, 768], dtype="bfloat16", featx_version="test"))

    settings = Settings(concurrency=5, classes=CLASSES)
    both = dict(map(shard, range(2)))
    assert [short(a) for a in decide([A], both, [], settings)] == [("skip", A.id, "done")]
    actions = decide([A], dict([shard(1)]), [], settings)
    assert [type(a) for a in actions] == [Create]
