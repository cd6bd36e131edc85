"""The alignment benchmark's inputs and featx's side: seeded random features with a shared latent,
and featx's batched scoring as ``featx align`` does it (the reference's side is
``bench.align.reference.compute_alignment``)."""

from __future__ import annotations

import time

import numpy as np
import torch

from featx.align import metrics as M

DIMS = (256, 384, 512, 768, 1024)


def make_feats(i: int, n: int, layers: int, latent: torch.Tensor) -> torch.Tensor:
    """Model ``i``'s [N, L, D] features (seeded): layers nearer a model-dependent depth share more
    of the latent, and a few rows carry outliers for the clamp."""
    g = torch.Generator().manual_seed(1000 + i)
    dim = DIMS[i % len(DIMS)]
    proj = torch.randn(latent.shape[1], dim, generator=g) / latent.shape[1] ** 0.5
    out = torch.empty(n, layers, dim)
    base = latent @ proj
    for layer in range(layers):
        noise_scale = 0.5 + 2.0 * abs(layer - layers * (0.3 + 0.4 * (i % 3) / 2)) / layers
        out[:, layer] = base + noise_scale * torch.randn(n, dim, generator=g) + 0.1 * torch.randn(1, dim, generator=g)
    out[torch.randint(0, n, (n // 50,), generator=g), :, 0] *= 20
    return out


def featx_alignment(feats: list[torch.Tensor], metrics: list[str], topk: int
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float, float]:
    """featx's path: one state per model for all metrics, then every unordered pair per metric.
    Returns (scores, indices) per metric in the reference's layout, and the seconds of each phase."""
    t0 = time.perf_counter()
    states = [M.build_state(M.prepare_features(x), metrics, topk) for x in feats]
    t_states = time.perf_counter() - t0
    m, out = len(feats), {}
    for metric in metrics:
        scores, indices = np.zeros((m, m)), np.zeros((m, m, 2))
        for i in range(m):
            for j in range(m):
                if metric != "cycle_knn" and i > j:
                    scores[i, j], indices[i, j] = scores[j, i], indices[j, i]
                    continue
                scores[i, j], indices[i, j] = M.best_layer_pair(M.layer_scores(metric, states[j], states[i]))
        out[metric] = (scores, indices)
    return out, t_states, time.perf_counter() - t0 - t_states
