"""Scale benchmark: peak host memory (RSS), rows/s and output bytes of ``featx extract`` as the
data set grows, in one file and in row shards (issue 20).

Each case builds (once, cached) a ``save_to_disk`` data set of N rows of short captions and one
tiny image per row, then runs ``featx extract`` as its own process on a small GPT-2-style model
(``featx-smoke/gpt2``); its peak RSS is the kernel's (``os.wait4``'s ``ru_maxrss``), its peak heap
the largest ``RssAnon`` sampled from ``/proc`` (file pages left out), its rows/s is
N over the wall time of the whole process (load, fingerprint, tokenise, extract, commit).

    python -m bench.scale --rows 10000 100000 1000000 --shard_rows 10000

N up to ``--one_file_max_rows`` also runs as one file; ``--preempt_rows`` N is also killed
(SIGKILL) part-way and rerun, in both layouts: the work a preempted model loses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.machine import RESULTS, loadavg, provenance, write_results

MODEL = "featx-smoke/gpt2"
WORDS = ("a photo of the red cat dog car tree house on a street by the river under blue sky with two "
         "people walking near old stone bridge at night in winter").split()


def tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 40, 200)).save(buf, "PNG")
    return buf.getvalue()


def build_dataset(rows: int, cache: Path) -> Path:
    """A ``save_to_disk`` data set of ``rows`` image-caption rows (captions of 6-20 words)."""
    path = cache / f"scale-{rows}"
    if (path / "state.json").exists():
        return path
    from datasets import Dataset, Features, Image, Value

    rng, png = random.Random(0), tiny_png()

    def gen():
        for _ in range(rows):
            yield {"image": {"bytes": png, "path": None},
                   "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))}

    ds = Dataset.from_generator(gen, features=Features({"image": Image(decode=False), "text": Value("string")}),
                                cache_dir=str(cache / "hf"))
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    tmp.replace(path)
    return path


@dataclass
class Run:
    """One ``featx extract`` process: its wall time, the kernel's resource usage, its JSON events."""

    seconds: float
    peak_rss_mib: float
    peak_anon_mib: float
    events: list[dict[str, Any]]
    killed: bool
    started: float  # time.time() at the start: events' "ts" less this is their time into the run

    def at(self, event: dict[str, Any]) -> float:
        """Seconds into the run of ``event`` (its "ts" has whole seconds)."""
        ts = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
        return max(ts - self.started, 0.0)


def anon_mib(pid: int) -> float:
    """``RssAnon`` of ``pid`` now: its heap, without the file pages it maps (libraries, and the data
    set's Arrow memory map, which the kernel may drop at will and ``ru_maxrss`` counts); 0 once gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("RssAnon:")), 0.0)


def extract(dataset: Path, out: Path, shard_rows: int | None, kill_at_s: float | None = None) -> Run:
    """``featx extract`` of ``MODEL`` into ``out`` as its own process; ``kill_at_s``: SIGKILL it
    then (a preemption without grace), else it must succeed."""
    featx = str(Path(sys.executable).with_name("featx"))
    cmd = [featx, "extract", "--models", MODEL, "--dataset", str(dataset), "--output_dir", str(out),
           "--device", "cpu", "--num_workers", "0", "--log_format", "json"]
    if shard_rows:
        cmd += ["--shard_rows", str(shard_rows)]
    with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: nothing blocks while it runs
        t0, started = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "FEATX_PROGRESS_S": "60"})
        killed, anon = False, 0.0
        while True:  # wait4 (not poll): it reaps the process with its resource usage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            anon = max(anon, anon_mib(proc.pid))  # sampled every 0.2 s: a peak between samples is missed
            if kill_at_s is not None and not killed and time.perf_counter() - t0 >= kill_at_s:
                proc.kill()
                killed = True
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        err.seek(0)
        text = err.read()
    if not killed and proc.returncode != 0:
        raise SystemExit(f"featx extract failed on {dataset}: {text[-2000:]}")
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return Run(seconds, round(usage.ru_maxrss / 1024, 1), round(anon, 1), events, killed, started)


def run_case(dataset: Path, rows: int, shard_rows: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="featx-scale-") as out:
        load = loadavg()
        run = extract(dataset, Path(out), shard_rows)
        files = [p for p in Path(out).rglob("*") if p.is_file() and not p.name.endswith(".json")]
        return {"rows": rows, "shard_rows": shard_rows, "seconds": round(run.seconds, 1),
                "rows_per_s": round(rows / run.seconds, 1), "peak_rss_mib": run.peak_rss_mib,
                "peak_anon_mib": run.peak_anon_mib,
                "output_bytes": sum(p.stat().st_size for p in files), "files": len(files),
                "loadavg_start": load, "loadavg_end": loadavg()}


def preempted(dataset: Path, rows: int, shard_rows: int | None, full_s: float, at: float) -> dict[str, Any]:
    """The time a preempted model loses: SIGKILL at ``at`` x its uninterrupted time, then the same
    command to the end. ``lost_s``: the killed run's work after its last commit (from the start when
    nothing was), which the rerun does again; from the killed run's own clock, so the machine's load
    during the rerun does not enter it. ``rerun_rows``: the rows the rerun extracted."""
    with tempfile.TemporaryDirectory(prefix="featx-scale-") as out:
        killed = extract(dataset, Path(out), shard_rows, kill_at_s=at * full_s)
        if not killed.killed:
            raise SystemExit(f"featx extract of {rows} rows ended before {at} x {full_s:.0f} s; nothing to measure")
        commits = [killed.at(e) for e in killed.events if e["event"] == "committed"]
        rerun = extract(dataset, Path(out), shard_rows)
    extracted = [e for e in rerun.events if e["event"] == "committed"]
    rerun_rows = sum(int(b) - int(a) for a, b in (e["rows"].split("-") for e in extracted)) if shard_rows else rows
    return {"rows": rows, "shard_rows": shard_rows, "uninterrupted_s": full_s, "killed_at_s": round(killed.seconds, 1),
            "committed_before_kill": len(commits), "last_commit_at_s": round(max(commits, default=0.0), 1),
            "lost_s": round(killed.seconds - max(commits, default=0.0), 1), "rerun_s": round(rerun.seconds, 1),
            "rerun_rows": rerun_rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--shard_rows", type=int, default=10_000, help="shard size of the sharded cases")
    p.add_argument("--one_file_max_rows", type=int, default=100_000,
                   help="largest N also run as one file (1M rows of this model: 1.3 GiB held until the end)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of each featx process: on a shared machine 2 spinning OpenMP threads run "
                        "4-15x slower than 1 (bench/README.md)")
    p.add_argument("--preempt_rows", type=int, default=100_000,
                   help="N of the preemption case (one of --rows; 0: skip it)")
    p.add_argument("--preempt_at", type=float, default=0.55, help="SIGKILL at this fraction of the uninterrupted time")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featx-bench-scale")
    p.add_argument("--out", type=Path, default=RESULTS / "scale-cpu.json")
    args = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every featx process
    torch.set_num_threads(args.threads)  # so that the results' machine.torch_threads says it
    results = {**provenance("cpu"), "model": MODEL, "cases": [], "preempted": []}
    full: dict[tuple[int, int | None], float] = {}
    for rows in args.rows:
        dataset = build_dataset(rows, args.cache)
        for shard_rows in ((None,) if rows <= args.one_file_max_rows else ()) + (args.shard_rows,):
            case = run_case(dataset, rows, shard_rows)
            full[rows, shard_rows] = case["seconds"]
            print(case, flush=True)
            results["cases"].append(case)
            write_results(args.out, results)
        if rows == args.preempt_rows:  # before larger N, so that a cut-short run still has it
            for shard_rows in (None, args.shard_rows):
                if (rows, shard_rows) in full:
                    case = preempted(dataset, rows, shard_rows, full[rows, shard_rows], args.preempt_at)
                    print(case, flush=True)
                    results["preempted"].append(case)
                    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
