"""Calibration cost (issue 21): K-permutation calibration of one model pair (the max over every layer
pair, Gröger et al.'s Algorithm 2), three ways on the same features and the same seeded permutations,
one run each, in one process:

* featx: one prepared state per model; every permutation maps the permuted side's state by index
  operations (``featx.align.calibration.null_statistics``), mutual_knn all K at once;
* featx rebuilding the permuted side's state per permutation (what featx did before);
* ``calibrated-similarity``'s ``calibrate_layers`` loop, its callback the reference's metric on one
  layer pair (the package recomputes both sides for every layer pair and permutation).

    python -m bench.align --calibration 200 --samples 1000 --layers 4 --metrics mutual_knn cka
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.align import reference as R
from bench.align.run import DIMS, make_feats
from bench.machine import provenance, write_results

TOPK, ALPHA, SEED = 10, 0.05, 0
MODELS = (0, 1)  # make_feats' models 0 and 1: widths DIMS[0] and DIMS[1]


def _featx(metric: str, pa, pb, k: int, rebuild: bool) -> tuple[tuple[float, float, float], float]:
    from featx.align import calibration as C
    from featx.align import metrics as M

    t0 = time.perf_counter()
    sa, sb = M.build_state(pa, [metric], TOPK), M.build_state(pb, [metric], TOPK)
    obs, _ = C.statistic(M.layer_scores(metric, sa, sb))
    perms = C.permutations(pa[0].shape[0], k, SEED)
    null = (C._rebuilt_nulls(metric, pa, [sb], perms, TOPK) if rebuild
            else C.null_statistics(metric, pa, [sb], perms, TOPK, state_a=sa))[0]
    got = C.calibrate(obs, null, ALPHA, C.upper_bound(metric, TOPK))
    return got, time.perf_counter() - t0


def case(metric: str, n: int, layers: int, k: int) -> dict[str, Any]:
    from calibrated_similarity import calibrate_layers

    from featx.align import calibration as C
    from featx.align import metrics as M

    latent = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    pa, pb = (M.prepare_features(make_feats(i, n, layers, latent)) for i in MODELS)
    for rebuild in (False, True):  # first-call costs stay out of the timings
        _featx(metric, [x[:64] for x in pa], [x[:64] for x in pb], 2, rebuild)
    ours, t_featx = _featx(metric, pa, pb, k, rebuild=False)
    rebuilt, t_rebuild = _featx(metric, pa, pb, k, rebuild=True)
    t0 = time.perf_counter()
    # the package permutes its second list: A (featx's permuted side) goes second
    theirs = calibrate_layers(list(pb), list(pa), lambda x, y: R.measure(metric, y, x, TOPK), agg="max", K=k,
                              alpha=ALPHA, smax=C.upper_bound(metric, TOPK),
                              generator=torch.Generator().manual_seed(SEED))
    t_pkg = time.perf_counter() - t0
    names = ("calibrated", "p_value", "threshold")
    return {"metric": metric, "K": k, "rows": n, "layers": layers, "widths": [DIMS[i] for i in MODELS],
            "layer_pairs": layers * layers, "featx_s": round(t_featx, 3), "featx_rebuild_s": round(t_rebuild, 3),
            "calibrated_similarity_s": round(t_pkg, 2), "speedup_vs_package": round(t_pkg / t_featx, 1),
            "speedup_vs_rebuild": round(t_rebuild / t_featx, 1),
            "featx": dict(zip(names, ours)), "featx_rebuild": dict(zip(names, rebuilt)),
            "calibrated_similarity": dict(zip(names, (float(v) for v in theirs)))}


def main(k: int, n: int, layers: int, metrics: list[str], out: Path) -> int:
    results: dict[str, Any] = {**provenance("cpu"), "config": {"topk": TOPK, "alpha": ALPHA, "seed": SEED,
                                                               "device": "cpu"}, "cases": []}
    for metric in metrics:
        results["cases"].append(case(metric, n, layers, k))
        print(results["cases"][-1], flush=True)
        write_results(out, results)
    print(f"wrote {out}")
    return 0
