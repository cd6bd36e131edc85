"""Disk full (ENOSPC) at each step of a commit, on a real small tmpfs with the real smoke models:
the model fails with ENOSPC and what its commit staged is removed, the next model is still tried,
no data file is left without its manifest and no hidden temporary stays; exit 1 (transient), one
``failed`` line per model and the ``summary`` line say so, never a traceback.

The space left is set from the sizes the same run writes on an ordinary disk (measured first), in
tmpfs pages, so each case fills the disk at the step it names.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from featx.errors import EXIT_FAILED
from tests.helpers import run_cli

MODELS = ("featx-smoke/gpt2", "featx-smoke/vit")
RUN = ("extract", "--models", *MODELS, "--dataset", "featx-sample")
PAGE = 4096


def _mount(where: Path, pages: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {p.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[callable]:
    """``make(name, free_pages)``: a 64-page tmpfs at tmp_path/name with ``free_pages`` left."""
    mounted: list[Path] = []

    def make(name: str, free_pages: int) -> Path:
        where = tmp_path / name
        _mount(where, 64)
        mounted.append(where)
        (where / ".filler").write_bytes(b"\0" * ((64 - free_pages) * PAGE))
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Bytes of each file the run writes, from the same run on an ordinary disk."""
    out = tmp_path_factory.mktemp("reference")
    r = run_cli(*RUN, "--output_dir", str(out))
    assert r.code == 0, r.err
    return {p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}


def _pages(n: int) -> int:
    return -(-n // PAGE)


def _first_data(sizes: dict[str, int]) -> int:
    return sizes["featx-smoke_gpt2_pool-avg.pt"]


# step -> (free pages on the output disk, free pages on TMPDIR's disk or None for the ordinary one,
# extra flags)
STEPS = {
    "data copy": (lambda s: _pages(_first_data(s)) - 1, None, ()),  # the failure record still fits
    "manifest": (lambda s: _pages(_first_data(s)), None, ()),  # the data fits, its manifest does not
    "failure record": (lambda s: 0, None, ()),  # nothing fits: the data, then its failure record
    # the run's own temporary file (1 page left: tempfile's own probe of TMPDIR must pass)
    "temporaries": (lambda s: 64, lambda s: 1, ()),
    "temporaries, safetensors": (lambda s: 64, lambda s: 1, ("--format", "safetensors")),
}


@pytest.mark.parametrize("step", STEPS)
def test_disk_full_at_each_commit_step(step: str, small_disk, sizes, monkeypatch: pytest.MonkeyPatch):
    out_free, tmp_free, flags = STEPS[step]
    out = small_disk("out", out_free(sizes))
    if tmp_free is not None:
        monkeypatch.setenv("TMPDIR", str(small_disk("tmp", tmp_free(sizes))))
        monkeypatch.setattr("tempfile.tempdir", None)  # tempfile reads TMPDIR again

    r = run_cli(*RUN, *flags, "--output_dir", str(out))
    failed = check_disk_full(r.code, r.err, out, flags)
    if step == "failure record":
        assert all("failure_record_not_written=" in line for line in failed), failed
    if tmp_free is not None:
        assert os.listdir(os.environ["TMPDIR"]) == [".filler"]


def check_disk_full(code: int, err: str, out: Path, flags: tuple[str, ...] = ()) -> list[str]:
    """What a run that filled ``out`` must leave: exit 1, ENOSPC per failed model, the next model
    tried, no traceback, no staged temporaries, no data without its manifest, and `featx status`
    agreeing. Returns the ``failed`` lines. Also used on the image (tests/e2e/test_gpu_image.py)."""
    assert code == EXIT_FAILED, err[-3000:]
    assert "Traceback" not in err and "featx: error:" not in err, err
    started = [line for line in err.splitlines() if " featx start " in line]
    failed = [line for line in err.splitlines() if " featx failed " in line]
    assert len(started) == len(MODELS), err  # the next model was tried
    assert failed and all("no space left on device (ENOSPC)" in line for line in failed), err
    assert "model=featx-smoke/gpt2 " in failed[0], err  # the step named fills the first model's commit
    (summary,) = [line for line in err.splitlines() if " featx summary " in line]
    assert f"failed={len(failed)}" in summary and "ENOSPC" in summary, summary

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".filler")
    assert not [f for f in files if Path(f).name.startswith(".")], files  # no staged temporaries
    data = [f for f in files if f.endswith((".pt", ".safetensors"))]
    assert all(f.rsplit(".", 1)[0] + ".manifest.json" in files for f in data), files
    status = run_cli("status", "--models", *MODELS, "--dataset", "featx-sample", *flags, "--output_dir", str(out),
                     "--json")
    states = {row["id"]: row["state"] for row in json.loads(status.out)}
    want = {m: "done" for m in MODELS}
    for line in failed:  # a failure whose record could not be written leaves the model missing
        model = line.split("model=", 1)[1].split(" ", 1)[0]
        want[model] = "missing" if "failure_record_not_written=" in line else "failed"
    assert states == want, err
    return failed
