"""Test helpers: run the real CLI in-process or as a subprocess and capture what a user sees."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
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


def run_featx(*args: str, env: dict | None = None, timeout: int = 600) -> CliResult:
    """``featx ARGS`` as its own process, as a user or a Job runs it."""
    p = subprocess.run([FEATX, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return CliResult(p.returncode, p.stdout, p.stderr)
