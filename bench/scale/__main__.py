"""Scale benchmark: peak host memory (RSS), rows/s and output bytes of ``featx extract`` as the
data set grows, in one file and in row shards (issue 20).

Each case builds (once, cached) a ``save_to_disk`` data set of N rows of short captions and one
tiny image per row, then runs ``featx extract`` as its own process on a small GPT-2-style model
(``featx-smoke/gpt2``); its peak RSS is the kernel's (``os.wait4``'s ``ru_maxrss``), its rows/s is
N over the wall time of the whole process (load, fingerprint, tokenise, extract, commit).

    python -m bench.scale --rows 10000 100000 --shard_rows 10000
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import RESULTS, provenance, write_results

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


def run_case(dataset: Path, rows: int, shard_rows: int | None) -> dict[str, Any]:
    featx = str(Path(sys.executable).with_name("featx"))
    with tempfile.TemporaryDirectory(prefix="featx-scale-") as out:
        cmd = [featx, "extract", "--models", MODEL, "--dataset", str(dataset), "--output_dir", out,
               "--device", "cpu", "--num_workers", "0", "--log_format", "json"]
        if shard_rows:
            cmd += ["--shard_rows", str(shard_rows)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "FEATX_PROGRESS_S": "60"})
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"featx extract failed for {rows} rows: {err[-2000:]}")
        files = [p for p in Path(out).rglob("*") if p.is_file()]
        return {"rows": rows, "shard_rows": shard_rows, "seconds": round(seconds, 1),
                "rows_per_s": round(rows / seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
                "output_bytes": sum(p.stat().st_size for p in files if not p.name.endswith(".json")),
                "files": sum(not p.name.endswith(".json") for p in files)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--shard_rows", type=int, default=10_000, help="shard size of the sharded cases")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "featx-bench-scale")
    p.add_argument("--out", type=Path, default=RESULTS / "scale-cpu.json")
    args = p.parse_args(argv)
    results = {**provenance("cpu"), "model": MODEL, "cases": []}
    for rows in args.rows:
        dataset = build_dataset(rows, args.cache)
        for shard_rows in (None, args.shard_rows):
            case = run_case(dataset, rows, shard_rows)
            print(case, flush=True)
            results["cases"].append(case)
            write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
