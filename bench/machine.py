"""Where and how a benchmark ran, written into every results file: numbers from a shared 2-core VM
mean little without the CPU, the load average at the start and the end, the commit and the exact
command that produced them."""

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


def _read(path: str, pattern: str) -> str | None:
    try:
        m = re.search(pattern, Path(path).read_text(), re.M)
    except OSError:
        return None
    return m.group(1).strip() if m else None


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


def command() -> str:
    """The command line as typed, module form for ``python -m`` runs (``sys.argv[0]`` is then a path)."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and ROOT in argv0.resolve().parents:
        head = ["python", "-m", ".".join(argv0.resolve().parent.relative_to(ROOT).parts)]
    else:
        head = ["python", sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, memory, versions and the load average now (``loadavg_start``)."""
    import torch

    info: dict[str, Any] = {
        "cpu": _read("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "mem_total_gib": round(int(_read("/proc/meminfo", r"^MemTotal:\s+(\d+) kB") or 0) / 2**20, 1),
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "device": device, "loadavg_start": loadavg(),
    }
    for dist in ("transformers", "timm"):
        try:
            info[dist] = __import__(dist).__version__
        except ImportError:
            info[dist] = None
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=p.name, gpu_memory_bytes=p.total_memory, gpu_capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda)
    return info


def provenance(device: str = "cpu") -> dict[str, Any]:
    """The header every results file starts with: machine, commit, command."""
    return {"machine": machine_info(device), "commit": git_commit(), "command": command()}


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` (atomically) with the load average now as ``machine.loadavg_end``; called
    after each case, so an interrupted run keeps what finished."""
    results["machine"]["loadavg_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)


def device_slug(device: str) -> str:
    """``cpu``, or the GPU's name in lower-case words (``nvidia-h200``): results file names."""
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    name = torch.cuda.get_device_name(torch.device(device))
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
