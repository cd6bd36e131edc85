"""Test helpers: run the real CLI in-process or as a subprocess and capture what a user sees."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEATX = str(Path(sys.executable).with_name("featx"))


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str) -> CliResult:
    """``featx ARGS`` in this process (fast); argparse exits become exit codes."""
    from featx.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = int(e.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


def find_helm() -> str:
    """helm from $FEATX_HELM, PATH, or scripts/build-control-plane.sh's cache (built on first use)."""
    import glob
    import shutil

    found = os.environ.get("FEATX_HELM") or shutil.which("helm")
    if found:
        return found
    cached = sorted(glob.glob(str(Path.home() / ".cache/featx/tools/*/bin/helm")))
    if cached:
        return cached[-1]
    from localcluster.controlplane import find_bin_dir  # builds the tools on a cold machine

    return str(find_bin_dir() / "helm")


def run_featx(*args: str, env: dict | None = None, timeout: int = 600) -> CliResult:
    """``featx ARGS`` as its own process, as a user or a Job runs it."""
    p = subprocess.run([FEATX, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return CliResult(p.returncode, p.stdout, p.stderr)


def wait_for_first_batch(proc: subprocess.Popen, model: str) -> list[str]:
    """Read ``proc``'s JSON log (stderr) until ``model`` has loaded and extracted a batch (a
    ``progress`` event, one per batch with FEATX_PROGRESS_S=0) but not its last; fails if the
    process ends before that, so a signal sent next can never land before the model loads."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("event") == "progress" and event.get("model") == model:
            done, total = map(int, event["done"].split("/"))
            if done < total:
                return seen
    proc.wait()
    raise AssertionError(f"{model} never reported progress before the run ended: {''.join(seen)[-2000:]}")


def hold_commit_barrier(fifo: Path, proc: subprocess.Popen, timeout: float = 300) -> int:
    """The write end of ``fifo`` (``FEATX_TEST_COMMIT_BARRIER`` of ``proc``), opened once ``proc``
    has opened its read end: ``proc`` is then inside a commit, data object published, manifest not
    yet written, until the returned descriptor is closed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no reader yet
                raise
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never reached the commit barrier: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)


def kill_mid_extraction(cmd: list[str], model: str, env: dict | None = None) -> None:
    """Run ``cmd`` and SIGKILL it once ``model`` has extracted its first batch but not its last."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**(env or os.environ), "FEATX_PROGRESS_S": "0"})
    wait_for_first_batch(proc, model)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
