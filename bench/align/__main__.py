"""Alignment benchmark: featx's batched metrics against the reference's own loop
(``measure_alignment.compute_alignment``: metric by metric, model pair by model pair, layer pair by
layer pair), both timed in full on the same features: no extrapolation.

M models x L layers x N samples of random features (D mixed 256-1024, a shared latent so that scores
are not trivial), every model against every model (the reference's symmetric mode). featx runs as
``featx align`` does: each model prepared once (0.95-quantile clamp, L2 norm) with what the metrics
need (k-NN of all its layers), then every model pair scored for all layer pairs at once. The
reference prepares the y model again for every pair and recomputes both k-NN graphs for every layer
pair. The reference is written for CUDA (it loads features to ``cuda:0``); here both run on the CPU.

    python -m bench.align              # 4 x 6 x 1024, mutual_knn: about a minute on 2 idle cores (make bench)
    python -m bench.align --rows 4000 32000 100000 --calibrate 200   # rows, calibration cost (bench/align/scale.py)
    python -m bench.align --calibration 200 --samples 1000 --layers 4 --metrics mutual_knn cka
                                       # K = 200 calibration of one pair: featx vs calibrated-similarity's
                                       # loop (bench/align/calibration.py)
    python -m bench.align --full       # 20 x 25 x 1024, the size featx was built for: the loop takes
                                       # about a day on 2 CPU cores; run it where both finish
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.align import reference as R
from bench.align.run import DIMS, featx_alignment, make_feats
from bench.machine import RESULTS, provenance, write_results

FULL = {"models": 20, "layers": 25, "samples": 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--full", action="store_true", help=f"the full size {FULL} (overrides the three above)")
    ap.add_argument("--metrics", nargs="+", default=["mutual_knn"], choices=sorted(R.METRIC_FNS))
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--out", default=str(RESULTS / "align-cpu.json"))
    ap.add_argument("--rows", nargs="+", type=int, default=None,
                    help="scale mode: featx align on two 4 x 256 models at these row counts (peak RSS, seconds)")
    ap.add_argument("--rows_metrics", nargs="+", default=["mutual_knn", "cka", "svcca"])
    ap.add_argument("--calibrate", type=int, default=0, help="scale mode: K-permutation calibration cost, "
                    "featx vs calibrated-similarity's loop on one pair")
    ap.add_argument("--calibrate_rows", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=0, metavar="K", help="calibration mode: K permutations of "
                    "one pair (--samples rows, --layers layers, each of --metrics), featx vs calibrated-similarity")
    a = ap.parse_args(argv)
    if a.calibration:
        from bench.align import calibration

        out = Path(a.out) if a.out != str(RESULTS / "align-cpu.json") else RESULTS / "align-calibration-cpu.json"
        return calibration.main(a.calibration, a.samples, a.layers, a.metrics, out)
    if a.rows or a.calibrate:
        from bench.align import scale

        out = Path(a.out) if a.out != str(RESULTS / "align-cpu.json") else RESULTS / "align-scale-cpu.json"
        return scale.main(a.rows or [], a.rows_metrics, a.calibrate, a.calibrate_rows, out)
    size = FULL if a.full else {"models": a.models, "layers": a.layers, "samples": a.samples}
    m, layers, n = size["models"], size["layers"], size["samples"]
    model_pairs = m * (m + 1) // 2
    results: dict[str, Any] = {
        **provenance("cpu"),
        "config": {**size, "metrics": a.metrics, "topk": a.topk, "dims": [DIMS[i % len(DIMS)] for i in range(m)],
                   "model_pairs": model_pairs, "layer_pairs_per_metric": model_pairs * layers * layers,
                   "mode": "symmetric (x = y = all models)", "device": "cpu",
                   "note": "the reference is written for CUDA (features on cuda:0); both run on the CPU here"},
    }
    print(f"{', '.join(a.metrics)} k={a.topk}: {m} models x {layers} layers x {n} samples; {model_pairs} model pairs, "
          f"{model_pairs * layers * layers:,} layer pairs per metric; torch {torch.get_num_threads()} threads, CPU",
          flush=True)
    latent = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    feats = [make_feats(i, n, layers, latent) for i in range(m)]
    warm = [feats[0][:64, :2].contiguous()]  # first-call costs of both paths stay out of the timings
    featx_alignment(warm, a.metrics, min(a.topk, 8))
    R.compute_alignment(warm, a.metrics[0], min(a.topk, 8))

    fx, t_states, t_pairs = featx_alignment(feats, a.metrics, a.topk)
    results["featx"] = {"prepare_and_state_s": round(t_states, 3), "pairs_s": round(t_pairs, 3),
                        "total_s": round(t_states + t_pairs, 3)}
    print(f"featx: states {t_states:.2f}s + pairs {t_pairs:.2f}s = {t_states + t_pairs:.2f}s", flush=True)
    ref_s, diffs, same_best = 0.0, [], 0
    for metric in a.metrics:
        t0 = time.perf_counter()
        scores, indices = R.compute_alignment(feats, metric, a.topk)
        ref_s += time.perf_counter() - t0
        diffs.append(float(np.abs(scores - fx[metric][0]).max()))
        same = (indices == fx[metric][1]).all(axis=-1)
        same_best += int(same[~np.eye(m, dtype=bool)].sum())  # a model with itself ties on every (l, l)
    results["reference"] = {"total_s": round(ref_s, 3), "measured": "full run, every layer pair"}
    results["ratio"] = round(ref_s / (t_states + t_pairs), 1)
    results["max_abs_score_diff"] = max(diffs)
    results["same_best_layer_pair"] = f"{same_best} of {m * (m - 1) * len(a.metrics)} pairs of different models"
    results["score_diff_note"] = ("mutual_knn differences are multiples of 1/(N*k): exact float32 similarity ties, "
                                  "which torch.topk (featx) and the reference's argsort break differently")
    print(f"reference loop: {ref_s:.1f}s; featx {results['ratio']:.1f}x faster; max |score diff| {max(diffs):.2e}; "
          f"same best layer pair {results['same_best_layer_pair']}", flush=True)
    write_results(Path(a.out), results)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
