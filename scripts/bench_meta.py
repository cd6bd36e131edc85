"""Where and how a benchmark ran, for the results files of ``bench_reconcile.py`` and
``bench_store.py``: numbers from a shared 2-core VM mean little without the machine, the load
average at the start and the end, the commit and the exact command that produced them."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def git_commit() -> str | None:
    """HEAD of the checkout the benchmark ran from, with ``+dirty`` when tracked files differ."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def provenance() -> dict[str, Any]:
    """The header of a results file: machine (with ``loadavg_start``), commit, command."""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else platform.processor()
    except OSError:
        cpu = platform.processor()
    machine = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "loadavg_start": loadavg()}
    return {"machine": machine, "commit": git_commit(),
            "command": shlex.join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` with the load average now as ``machine.loadavg_end``."""
    results["machine"]["loadavg_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
