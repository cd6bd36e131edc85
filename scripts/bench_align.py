#!/usr/bin/env python
"""Benchmark (not a test): featx's batched mutual k-NN against the reference's per-layer-pair loop.

Same inputs, same run: M models × L layers × N samples of random features (D mixed 256–1024, a
shared latent so scores are not trivial), every model against every model (the reference's
symmetric mode: M(M+1)/2 model pairs, each L×L layer pairs, best kept).

* featx: ``featx.align`` as ``featx align`` runs it — each model prepared once (0.95-quantile clamp,
  L2 norm), k-NN of all its layers computed once, every model pair scored for all layer pairs at once.
* loop: ``tests/test_align_reference.py`` — the reference's ``measure_alignment.compute_alignment``:
  per model pair the y model is prepared again (exact sort-based clamp), then for every layer pair
  both layers are normalised, both k-NN graphs recomputed (argsort) and the masks intersected.
  The full loop takes hours on a CPU, so it is timed on a measured sample of layer pairs and
  extrapolated (per-layer-pair time × layer pairs + preparation time × model pairs); the output
  says so. Its scores on the sample are checked against featx's matrices.

    python scripts/bench_align.py            # 20 × 25 × 1024, ~2-5 min on 2 CPU cores
    python scripts/bench_align.py --models 6 --layers 8 --samples 256 --loop_layer_pairs 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featx.align import metrics as M  # noqa: E402
from tests import test_align_reference as R  # noqa: E402

DIMS = (256, 384, 512, 768, 1024)


def make_feats(i: int, n: int, layers: int, latent: torch.Tensor) -> torch.Tensor:
    """Model ``i``'s [N, L, D] features, regenerated identically on demand (seeded)."""
    g = torch.Generator().manual_seed(1000 + i)
    dim = DIMS[i % len(DIMS)]
    proj = torch.randn(latent.shape[1], dim, generator=g) / latent.shape[1] ** 0.5
    out = torch.empty(n, layers, dim)
    base = latent @ proj
    for layer in range(layers):
        noise_scale = 0.5 + 2.0 * abs(layer - layers * (0.3 + 0.4 * (i % 3) / 2)) / layers
        out[:, layer] = base + noise_scale * torch.randn(n, dim, generator=g) + 0.1 * torch.randn(1, dim, generator=g)
    out[torch.randint(0, n, (n // 50,), generator=g), :, 0] *= 20  # a few outliers for the clamp
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--layers", type=int, default=25)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--loop_model_pairs", type=int, default=3, help="model pairs the loop is timed on")
    ap.add_argument("--loop_layer_pairs", type=int, default=16, help="layer pairs timed per sampled model pair")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "align.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m, L, n, k = args.models, args.layers, args.samples, args.topk
    latent = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
    model_pairs = m * (m + 1) // 2
    print(f"mutual_knn k={k}: {m} models x {L} layers x {n} samples, D in {DIMS}; "
          f"{model_pairs} model pairs (symmetric), {model_pairs * L * L:,} layer pairs; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    # warm-up (first-call costs of both code paths are not what is compared)
    w = M.build_state(M.prepare_features(torch.randn(64, 2, 32)), ["mutual_knn"], k)
    M.layer_scores("mutual_knn", w, w)
    wx = F.normalize(torch.randn(n, DIMS[0]), dim=-1)
    R.mutual_knn(wx, wx, k)

    # -- featx: every model once, every pair batched ---------------------------------------------
    t0 = time.perf_counter()
    states, gen_s = [], 0.0
    for i in range(m):
        tg = time.perf_counter()
        x = make_feats(i, n, L, latent)
        gen_s += time.perf_counter() - tg
        states.append(M.build_state(M.prepare_features(x), ["mutual_knn"], k))
        del x
    t_states = time.perf_counter() - t0 - gen_s
    t1 = time.perf_counter()
    best = {}
    mats = {}
    for i in range(m):
        for j in range(i, m):
            mat = M.layer_scores("mutual_knn", states[j], states[i])  # A = y, B = x, as the reference
            best[(i, j)] = M.best_layer_pair(mat)
            mats[(i, j)] = mat
    t_pairs = time.perf_counter() - t1
    featx_total = t_states + t_pairs
    print(f"featx: prepare + k-NN of all layers {t_states:.1f}s, {model_pairs} model pairs {t_pairs:.1f}s, "
          f"total {featx_total:.1f}s (feature generation {gen_s:.1f}s not counted)")

    # -- the reference's loop, on a measured sample ------------------------------------------------
    g = torch.Generator().manual_seed(7)
    sample_pairs = [(0, 1), (2, m - 1), (m // 2, m // 2)][: args.loop_model_pairs]
    sample_pairs = [(min(a, m - 1), min(b, m - 1)) for a, b in sample_pairs]
    prep_times, lp_times, diffs = [], [], []
    for i, j in sample_pairs:
        xi, yj = make_feats(i, n, L, latent), make_feats(j, n, L, latent)
        tp = time.perf_counter()
        y_prepared = R.prepare(yj)  # the reference prepares y again for every model pair
        prep_times.append(time.perf_counter() - tp)
        x_prepared = R.prepare(xi)
        chosen = torch.randperm(L * L, generator=g)[: args.loop_layer_pairs].tolist()
        for flat in chosen:
            a, b = divmod(flat, L)  # a: layer of y (the reference's outer loop), b: layer of x
            tl = time.perf_counter()
            ya = F.normalize(y_prepared[:, a, :], p=2, dim=-1)
            xb = F.normalize(x_prepared[:, b, :], p=2, dim=-1)
            score = R.mutual_knn(ya, xb, k)
            lp_times.append(time.perf_counter() - tl)
            diffs.append(abs(score - float(mats[(i, j)][a, b])))
        del xi, yj, x_prepared, y_prepared
    per_lp = sum(lp_times) / len(lp_times)
    per_prep = sum(prep_times) / len(prep_times)
    loop_pairs_s = per_lp * model_pairs * L * L
    loop_total = loop_pairs_s + per_prep * model_pairs
    print(f"loop (measured on {len(lp_times)} layer pairs of {len(sample_pairs)} model pairs, extrapolated): "
          f"{per_lp * 1e3:.1f} ms per layer pair, {per_prep:.2f}s preparation per model pair -> "
          f"{loop_total:.0f}s total ({loop_total / 3600:.2f} h)")
    ratio = loop_total / featx_total
    print(f"speed-up featx vs loop: {ratio:,.0f}x end to end; {loop_pairs_s / t_pairs:,.0f}x on the pair "
          f"scoring alone; max |score difference| on the sample {max(diffs):.2e}")

    result = {
        "benchmark": "mutual_knn alignment, featx batched vs the reference's per-layer-pair loop",
        "config": {"models": m, "layers": L, "samples": n, "topk": k, "dims": list(DIMS[: min(m, len(DIMS))]),
                   "model_pairs": model_pairs, "layer_pairs": model_pairs * L * L, "mode": "symmetric (x = y = all models)"},
        "machine": {"device": "cpu", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "note": "shared machine: other processes were running"},
        "featx": {"prepare_and_knn_s": round(t_states, 3), "pairs_s": round(t_pairs, 3), "total_s": round(featx_total, 3),
                  "measured": "full run"},
        "loop": {"per_layer_pair_ms": round(per_lp * 1e3, 3), "prepare_per_model_pair_s": round(per_prep, 3),
                 "total_s": round(loop_total, 1), "pairs_s": round(loop_pairs_s, 1),
                 "measured": f"EXTRAPOLATED from {len(lp_times)} timed layer pairs of {len(sample_pairs)} model pairs "
                             f"({sample_pairs}) and {len(prep_times)} timed preparations"},
        "ratio_total": round(ratio, 1),
        "ratio_pairs_only": round(loop_pairs_s / t_pairs, 1),
        "max_abs_score_diff_on_sample": max(diffs),
        "score_diff_note": "differences are multiples of 1/(N*k): exact float32 similarity ties, which torch.topk "
                           "(featx) and the reference's argsort break differently; both are valid k-NN sets",
        "best_example": {"pair": [0, 1], "score": best[(0, 1)][0], "indices_y_x": list(best[(0, 1)][1])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
