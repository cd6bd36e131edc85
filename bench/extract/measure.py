"""Timing, peak memory and agreement of one benchmark run, and the interleaved A B A B ... schedule
that makes a comparison on a shared machine fair: load that comes and goes hits every side alike,
and each side's median with its min-max shows how much the numbers moved.

Peak memory: on CPU the process's resident-set high-water mark (``VmHWM``), reset before each run
by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) after ``gc.collect()`` and glibc's
``malloc_trim(0)``; where the reset is refused, a thread samples ``VmRSS`` every 2 ms instead.
Reported as the peak and the peak minus the resident size just before the run (weights are already
resident). On CUDA ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``), reset before
each run. CPU time is this process's (all threads): steadier than wall time under load.
"""

from __future__ import annotations

import ctypes
import gc
import re
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where unavailable)."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): steadier than wall time on a shared machine
    peak_bytes: int = 0  # CPU: peak RSS; CUDA: max_memory_allocated
    peak_delta_bytes: int = 0  # peak minus the value just before the run
    reserved_peak_bytes: int | None = None  # CUDA only
    method: str = ""


@contextmanager
def measure(device: str) -> Iterator[Measurement]:
    """Wall time and peak memory of the enclosed block (see the module doc for the methods)."""
    m = Measurement()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        c0, t0 = time.process_time(), time.perf_counter()
        yield m
        torch.cuda.synchronize()
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - c0
        m.peak_bytes = torch.cuda.max_memory_allocated()
        m.reserved_peak_bytes = torch.cuda.max_memory_reserved()
        m.peak_delta_bytes = m.peak_bytes - before
        m.method = "torch.cuda.max_memory_allocated"
        return
    _malloc_trim()
    before = _proc_status("VmRSS")
    sampler: dict[str, Any] = {}
    if _reset_hwm():
        m.method = "VmHWM after clear_refs=5"
    else:
        m.method = "VmRSS sampled every 2 ms"
        stop = threading.Event()
        sampler["peak"] = before

        def sample():
            while not stop.is_set():
                sampler["peak"] = max(sampler["peak"], _proc_status("VmRSS"))
                time.sleep(0.002)

        sampler["stop"], sampler["thread"] = stop, threading.Thread(target=sample, daemon=True)
        sampler["thread"].start()
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - c0
        if sampler:
            sampler["stop"].set()
            sampler["thread"].join()
            m.peak_bytes = max(sampler["peak"], _proc_status("VmRSS"))
        else:
            m.peak_bytes = _proc_status("VmHWM")
        m.peak_delta_bytes = m.peak_bytes - before


# ---------------------------------------------------------------- comparisons


def compare(feats: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Per layer: max |a - b| and min cosine over samples, for ``[N, L, D]`` features."""
    a, b = feats.float(), ref.float()
    if a.shape != b.shape:
        return {"error": f"shape {tuple(a.shape)} vs {tuple(b.shape)}"}
    diff = (a - b).abs().amax(dim=(0, 2))
    cos = F.cosine_similarity(a, b, dim=-1).amin(0)
    return {"max_abs_diff": float(diff.max()), "min_cos": float(cos.min()),
            "max_abs_value": float(b.abs().max()),
            "per_layer_max_abs_diff": [float(x) for x in diff], "per_layer_min_cos": [round(float(x), 6) for x in cos]}


def scalar_diffs(out: dict[str, Any], got: dict[str, Any], want: dict[str, Any]) -> None:
    """Adds |got - want| of the loss and bpb scalars to ``out``."""
    for k in ("loss", "bpb"):
        if k in got and k in want:
            out[f"{k}_abs_diff"] = abs(float(got[k]) - float(want[k]))


@dataclass(frozen=True)
class Spread:
    """Median of repeated runs with the smallest and largest value."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float], digits: int = 3) -> Spread:
        return cls(round(statistics.median(values), digits), round(min(values), digits), round(max(values), digits))


def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """``num / den`` as the ratio of the medians, with the min-max of the run-by-run ratios (run i
    of one side against run i of the other: neighbours in the interleaved schedule)."""
    pairs = [a / max(b, 1e-9) for a, b in zip(num, den)]
    return {"of_medians": round(statistics.median(num) / max(statistics.median(den), 1e-9), 2),
            "pairs_min": round(min(pairs), 2), "pairs_max": round(max(pairs), 2)}


def ratios(runs: dict[str, list[Measurement]], num: str, den: str) -> dict[str, dict[str, float]]:
    """``ratio`` of side ``num``'s times over side ``den``'s, in wall and in CPU seconds."""
    return {"wall": ratio([m.seconds for m in runs[num]], [m.seconds for m in runs[den]]),
            "cpu": ratio([m.cpu_seconds for m in runs[num]], [m.cpu_seconds for m in runs[den]])}


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, device: str
                ) -> tuple[dict[str, list[Measurement]], dict[str, Any]]:
    """Run every side once per round, in the given order, for ``repeats`` rounds (A B A B ...).
    Returns each side's measurements and its last output (outputs of one side do not change
    between rounds: the benchmark checks them once)."""
    runs: dict[str, list[Measurement]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    gc.collect()
    gc.freeze()  # the model and the libraries: measure()'s collections then scan only what runs create
    try:
        for _ in range(repeats):
            for name, fn in sides.items():
                outputs.pop(name, None)  # the previous round's output is not kept alive during this run
                with measure(device) as m:
                    out = fn()
                runs[name].append(m)
                outputs[name] = out
    finally:
        gc.unfreeze()
    return runs, outputs


def summarize(runs: Sequence[Measurement]) -> dict[str, Any]:
    """Wall and CPU seconds as median (min-max), the largest peak, and every run."""
    return {"seconds": asdict(Spread.of([m.seconds for m in runs])),
            "cpu_seconds": asdict(Spread.of([m.cpu_seconds for m in runs], 2)),
            "peak_bytes": max(m.peak_bytes for m in runs), "peak_delta_bytes": max(m.peak_delta_bytes for m in runs),
            "runs": [asdict(m) for m in runs]}
