"""Alignment at many rows and calibration cost (issue 21): ``featx align`` on two synthetic models
(4 layers x 256, the benchmark's seeded features with a shared latent), each (rows, metric) case in
its own process so its peak RSS is its own; and K-permutation calibration of one pair, featx's
batched path against ``calibrated-similarity``'s ``calibrate_layers`` loop on the same permutations.

    python -m bench.align --rows 4000 32000 100000 --calibrate 200   # writes bench/results/align-scale-cpu.json

mutual_knn is also run through the dense path (one N×N similarity matrix per layer, up to
``DENSE_MAX`` rows) and with approximate neighbours (``--knn_index hnsw``, where faiss is installed,
up to ``APPROX_MAX`` rows), and its scores compared with the row-blocked exact ones.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.align import reference as R
from bench.align.run import make_feats
from bench.machine import provenance, write_results

LAYERS, WIDTH = 4, 256
DENSE_MAX = 32000  # the dense path's N×N float32 similarity matrix per layer: 4 GiB at 32k rows
#: HNSW on these random 256-wide rows builds slower than exact search runs on 2 loaded cores
#: (32k rows: 559 s vs 262 s), so the approximate case stops here
APPROX_MAX = 32000


def _features(n: int, i: int) -> torch.Tensor:
    latent = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    return make_feats(i * 5, n, LAYERS, latent)  # i * 5: DIMS[0] = 256 for both models


def one_case(x: str, y: str, metric: str, out: str, mode: str = "blocked") -> dict[str, Any]:
    """Runs in the child: ``featx align`` in-process (``mode``: blocked, dense: one N×N block per
    layer, or hnsw), then its own peak RSS, the scores and (hnsw) the recall."""
    from featx.align import metrics as M
    from featx.align.results import load_results
    from featx.cli.main import main

    n = torch.load(x, weights_only=True)["feats"].shape[0]
    if mode == "dense":
        M._BLOCK_BUDGET = n * n
    extra = ["--knn_index", "hnsw"] if mode == "hnsw" else []
    t0 = time.perf_counter()
    rc = main(["align", "--x", x, "--y", y, "--metric", metric, "--topk", "10", "--out", out, "--quiet",
               "--device", "cpu", *extra])
    seconds = time.perf_counter() - t0
    got = load_results(next(Path(out).rglob(f"{M.result_name(metric, 10)}.npz")))
    rec = {"rc": rc, "seconds": round(seconds, 2),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
           "score": float(got["scores"][0][0])}
    if mode == "hnsw":
        rec["recall_at_k"] = [got["knn_recall_x"][0], got["knn_recall_y"][0]]
    return rec


def _modes(metric: str, n: int) -> list[str]:
    if metric != "mutual_knn":
        return ["blocked"]
    try:
        import faiss  # noqa: F401
        approx = ["hnsw"] if n <= APPROX_MAX else []
    except ImportError:
        approx = []
    return ["blocked"] + (["dense"] if n <= DENSE_MAX else []) + approx


def rows_cases(rows: list[int], metrics: list[str], results: dict[str, Any], out: Path) -> None:
    for n in rows:
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i in range(2):
                p = Path(tmp) / f"model{i}.pt"
                torch.save({"feats": _features(n, i)}, p)
                paths.append(str(p))
            for metric in metrics:
                for mode in _modes(metric, n):
                    key = f"{metric}@{n}" + ("" if mode == "blocked" else f"/{mode}")
                    code = ("import json, sys; from bench.align.scale import one_case; print(json.dumps(one_case("
                            f"{paths[0]!r}, {paths[1]!r}, {metric!r}, {tmp + '/al-' + mode!r}, {mode!r})))")
                    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
                    results["rows"][key] = (json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0
                                            else {"failed": r.stderr.strip().splitlines()[-1:]})
                    if mode != "blocked" and "score" in results["rows"][key]:
                        exact = results["rows"][f"{metric}@{n}"].get("score")
                        results["rows"][key]["score_minus_blocked"] = results["rows"][key]["score"] - exact
                    print(key, results["rows"][key], flush=True)
                    write_results(out, results)


def calibration_case(k: int, n: int, metric: str, results: dict[str, Any], out: Path) -> None:
    from calibrated_similarity import calibrate_layers

    from featx.align import calibration as C
    from featx.align import metrics as M

    pa, pb = M.prepare_features(_features(n, 0)), M.prepare_features(_features(n, 1))
    t0 = time.perf_counter()
    sb = M.build_state(pb, [metric], 10)
    obs, _ = C.statistic(M.layer_scores(metric, M.build_state(pa, [metric], 10), sb))
    null = C.null_statistics(metric, pa, [sb], C.permutations(n, k, 0), 10)[0]
    ours = C.calibrate(obs, null, 0.05, C.upper_bound(metric, 10))
    t_featx = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = calibrate_layers(list(pb), list(pa), lambda x, y: R.measure(metric, y, x, 10), K=k, alpha=0.05,
                              smax=C.upper_bound(metric, 10), generator=torch.Generator().manual_seed(0))
    t_pkg = time.perf_counter() - t0
    results["calibration"][f"{metric}@{n}"] = {
        "K": k, "rows": n, "layers": LAYERS, "width": WIDTH, "featx_s": round(t_featx, 2),
        "calibrated_similarity_s": round(t_pkg, 2), "ratio": round(t_pkg / t_featx, 1),
        "featx": {"calibrated": ours[0], "p_value": ours[1], "threshold": ours[2]},
        "calibrated_similarity": {"calibrated": float(theirs[0]), "p_value": float(theirs[1]),
                                  "threshold": float(theirs[2])}}
    print(metric, results["calibration"][f"{metric}@{n}"], flush=True)
    write_results(out, results)


def main(rows: list[int], metrics: list[str], k: int, cal_rows: int, out: Path) -> int:
    results: dict[str, Any] = {**provenance("cpu"), "config": {"layers": LAYERS, "width": WIDTH, "models": 2,
                                                               "topk": 10, "device": "cpu"},
                               "rows": {}, "calibration": {}}
    rows_cases(rows, metrics, results, out)
    if k:
        for metric in ("mutual_knn", "cka"):
            calibration_case(k, cal_rows, metric, results, out)
    print(f"wrote {out}")
    return 0
