"""SIGTERM (what Kubernetes sends on pod deletion) and SIGINT (Ctrl-C) stop a real `featx extract`
process cleanly: one line of what was and was not committed, exit 128 + signum, no temporaries,
never a data file without its manifest. Signals land at controlled points: after a model's first
batch (a progress event), or inside the commit between data and manifest (the
FEATX_TEST_COMMIT_BARRIER FIFO). Two real writers of one model racing at that point end with one
valid manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from featx.pipeline.runner import ModelOutcome, RunSummary
from featx.signals import Interrupted
from tests.helpers import FEATX, hold_commit_barrier, run_cli, wait_for_first_batch

SUBDIR = Path("featx-sample/default")
DATA = ["--dataset", "featx-sample", "--num_workers", "0"]


def start(out: Path | str, *models: str, env: dict | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`featx extract` of ``models`` into ``out`` (a directory or an s3:// URL), JSON log on stderr."""
    where = ["--store", out] if str(out).startswith("s3://") else ["--output_dir", str(out)]
    cmd = [FEATX, "extract", "--models", *models, *DATA, *where, "--log_format", "json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FEATX_PROGRESS_S": "0", **(env or {})})


def states(out: Path, *models: str, extra: tuple[str, ...] = ()) -> list[str]:
    """`featx status` of ``models`` for the run ``start(..., extra=extra)`` made."""
    r = run_cli("status", "--models", *models, "--dataset", "featx-sample", "--output_dir", str(out), "--json", *extra)
    return [s["state"] for s in json.loads(r.out)]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("featx:")]


def test_sigterm_mid_model_says_what_was_committed_and_exits_143(tmp_path):
    out, log = tmp_path / "out", tmp_path / "termination-log"
    log.write_text("")
    proc = start(out, "featx-smoke/gpt2", "featx-smoke/dinov2", "featx-smoke/opt",
                 env={"FEATX_TERMINATION_LOG": str(log)}, extra=("--batch_size", "1"))
    wait_for_first_batch(proc, "featx-smoke/dinov2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    lines = error_lines(err)
    assert lines == ["featx: interrupted by SIGTERM: committed featx-smoke/gpt2; not committed: "
                     "featx-smoke/dinov2 (in progress), 1 not started"], err[-2000:]
    assert log.read_text() == lines[0]  # what `kubectl describe pod` and the controller show
    assert "Traceback" not in err
    assert states(out, "featx-smoke/gpt2", "featx-smoke/dinov2", "featx-smoke/opt") == ["done", "missing", "missing"]
    assert sorted(p.name for p in (out / SUBDIR).iterdir()) == ["featx-smoke_gpt2_pool-avg.manifest.json",
                                                                 "featx-smoke_gpt2_pool-avg.pt"]


def test_sigint_inside_the_commit_completes_it_first_and_exits_130(tmp_path):
    out, fifo = tmp_path / "out", tmp_path / "barrier"
    os.mkfifo(fifo)
    proc = start(out, "featx-smoke/gpt2", "featx-smoke/opt", env={"FEATX_TEST_COMMIT_BARRIER": str(fifo)},
                 extra=("--num_samples", "8"))
    fd = hold_commit_barrier(fifo, proc)
    assert (out / SUBDIR / "featx-smoke_gpt2_pool-avg.pt").is_file()  # published, manifest not yet
    proc.send_signal(signal.SIGINT)
    os.close(fd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert error_lines(err) == ["featx: interrupted by SIGINT: committed featx-smoke/gpt2; "
                                "not committed: 1 not started"], err[-2000:]
    assert states(out, "featx-smoke/gpt2", "featx-smoke/opt", extra=("--num_samples", "8")) == ["done", "missing"]
    assert leftovers(out) == []


def test_sigterm_during_the_only_model_commits_nothing(tmp_path):
    out = tmp_path / "out"
    proc = start(out, "featx-smoke/gpt2", extra=("--batch_size", "1"))
    wait_for_first_batch(proc, "featx-smoke/gpt2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143
    assert error_lines(err) == ["featx: interrupted by SIGTERM: committed nothing; not committed: "
                                "featx-smoke/gpt2 (in progress)"], err[-2000:]
    assert not list(out.rglob("*.pt")) and leftovers(out) == []


def test_signal_before_any_model_started(tmp_path, monkeypatch):
    """A real SIGTERM to this process while `featx extract` loads its rows (in-process run)."""
    import featx.data

    def load_rows(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal must interrupt before this line")

    monkeypatch.setattr(featx.data, "load_rows", load_rows)
    r = run_cli("extract", "--models", "featx-smoke/gpt2", *DATA, "--output_dir", str(tmp_path / "out"))
    assert r.code == 143
    assert r.err.strip() == "featx: interrupted by SIGTERM before any model started; nothing was committed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the command


@pytest.mark.parametrize("backend", ["local", pytest.param("s3", marks=pytest.mark.s3)])
@pytest.mark.parametrize("release_first", ["first_publisher", "last_publisher"])
def test_two_writers_of_one_model_end_done(request, tmp_path, monkeypatch, backend, release_first):
    """Two `featx extract` processes of one model with different seeds (different bytes) both
    publish their data, then wait at the commit barrier; whichever is let go first, the model ends
    `done` with the manifest of the bytes that stand, and neither reports a failure."""
    out: Path | str = tmp_path / "out"
    if backend == "s3":
        sw = request.getfixturevalue("seaweedfs")
        for name, value in sw.env().items():
            monkeypatch.setenv(name, value)  # for the writers and for the in-process checks
        out = sw.url(f"race-{release_first}")
    fifos = [tmp_path / "a", tmp_path / "b"]
    procs, fds = [], []
    for i, fifo in enumerate(fifos):
        os.mkfifo(fifo)
        procs.append(start(out, "featx-smoke/gpt2", env={"FEATX_TEST_COMMIT_BARRIER": str(fifo)},
                           extra=("--num_samples", "8", "--seed", str(i), "--log_format", "text")))
        fds.append(hold_commit_barrier(fifo, procs[-1]))  # writer i has published; the next one publishes after it
    order = [0, 1] if release_first == "first_publisher" else [1, 0]
    results = []
    for i in order:
        os.close(fds[i])
        results.append(procs[i].communicate(timeout=300))
        assert procs[i].returncode == 0, results[-1][1][-2000:]
    # writer 1 published last: its bytes (seed 1) stand, committed under its own identity
    r = run_cli("status", "--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--store", str(out), "--json",
                "--num_samples", "8", "--seed", "1")
    assert [s["state"] for s in json.loads(r.out)] == ["done"], r.out + r.err
    if release_first == "first_publisher":  # its manifest went in first; the last publisher replaced it
        assert "".join(o for o, _ in results).count("committed") == 2
    else:
        assert "another writer committed this model first" in results[1][0]
    import featx

    assert featx.load("featx-smoke/gpt2", str(out), dataset="featx-sample").feats.shape[0] == 8
    if backend == "local":
        assert leftovers(out) == []


def test_interruption_line():
    summary = RunSummary([ModelOutcome("a", "skipped"), ModelOutcome("b", "committed"), ModelOutcome("c", "failed"),
                          ModelOutcome("d", "committed")],
                         interrupted=Interrupted(signal.SIGTERM), in_progress="e", not_started=["f", "g"])
    assert summary.interruption() == ("interrupted by SIGTERM: committed b, d; 1 already done; failed: c; "
                                      "not committed: e (in progress), 2 not started")
    assert summary.exit_code == 143
    done = RunSummary([ModelOutcome("a", "committed")], interrupted=Interrupted(signal.SIGINT))
    assert done.interruption() == "interrupted by SIGINT: committed a" and done.exit_code == 130
    sharded = RunSummary([], interrupted=Interrupted(signal.SIGTERM), in_progress="e", in_progress_shards=(3, 8),
                         not_started=["f"])
    assert sharded.interruption() == ("interrupted by SIGTERM: committed nothing; e: 3/8 shards committed, the other 5 "
                                      "are extracted by a rerun; not committed: 1 not started")


def test_sigterm_stops_any_command_with_143(tmp_path, monkeypatch):
    """Every command, not only extract: as a container's PID 1 (the controller's `featx reconcile`)
    featx would otherwise ignore SIGTERM until Kubernetes kills it after the grace period."""
    import featx.cli.status

    def open_store_from(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal must interrupt before this line")

    monkeypatch.setattr(featx.cli.status, "open_store_from", open_store_from)
    r = run_cli("status", "--models", "featx-smoke/gpt2", "--output_dir", str(tmp_path))
    assert (r.code, r.err) == (143, "featx: interrupted by SIGTERM\n")
