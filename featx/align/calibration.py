"""Permutation-null calibration of the best-layer-pair score (Gröger, Wen & Brbić, ICML 2026,
"Revisiting the Platonic Representation Hypothesis: An Aristotelian View", Algorithm 2; their
package ``calibrated-similarity``'s ``calibrate_layers(..., agg="max")``).

The statistic is the maximum over the whole layer search, ``T = max_ij S[i, j]``; under the null the
rows of one side are permuted (one permutation for all its layers), so the max over layers is
calibrated too. With ``T_obs`` and the ``K`` null values ``T_k``:

* threshold ``τ`` = the ``ceil((1 - α)(K + 1))``-th smallest of ``{T_obs, T_1..T_K}``,
* add-one p-value ``(1 + #{T_k ≥ T_obs}) / (K + 1)``,
* calibrated score ``clamp((T_obs - τ) / (s_max - τ), 0, 1)``: 0 unless ``T_obs`` beats the null.

Work per permutation: the permuted side's per-layer state is rebuilt once (neighbour sets,
kernels; clamp thresholds and row norms do not depend on row order, so permuting prepared layers is
preparing permuted ones) and scored against the other side's state, reused for every permutation,
for all layer pairs at once — where the package's loop recomputes both sides per layer pair.
Permutations come from ``torch.randperm(N, generator=torch.Generator().manual_seed(seed))``, drawn in
order, so a seed gives the package's permutations when it is handed the same generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featx.align import metrics as M


@dataclass(frozen=True)
class Calibrated:
    """One model pair's calibrated best score; ``layers`` are those of the raw best (None if NaN)."""

    score: float  # T_obs: raw best over every layer pair, no zero floor
    layers: tuple[int, int] | None
    calibrated: float
    p_value: float
    threshold: float  # τ
    permutations: int


def upper_bound(metric: str, topk: int) -> float:
    """``s_max`` of the normalisation: the upper end of the registry's range (``k`` for lcs_knn)."""
    hi = M.REGISTRY[metric].range.strip("[]").split(",")[1].strip()
    return float(topk) if hi == "k" else float(hi)


def check_calibratable(metric: str) -> None:
    if M.is_distance(metric):
        raise ValueError(f"{metric} is a distance; calibration is defined for similarities (higher = more alike)")


def permutations(n: int, k: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g) for _ in range(k)]


def permute(prepared: M.Prepared, perm: torch.Tensor) -> M.Prepared:
    """Rows of every layer in the order ``perm`` (one permutation for all layers)."""
    if isinstance(prepared, torch.Tensor):
        return prepared[:, perm.to(prepared.device)]
    return [x[perm.to(x.device)] for x in prepared]


def statistic(scores_ab: torch.Tensor) -> tuple[float, tuple[int, int] | None]:
    """``max`` over the layer search (first maximal pair), NaN never wins."""
    score, (i, j) = M.best_layer_pair(scores_ab, zero_floor=False)
    return score, ((i, j) if i >= 0 else None)


def null_statistics(metric: str, prepared_a: M.Prepared, others: list[M.ModelState], perms: list[torch.Tensor],
                    topk: int) -> torch.Tensor:
    """``[len(others), K]``: the statistic of A's rows permuted by each ``perm`` against each state in
    ``others`` (A permuted once per permutation, shared by every other model)."""
    out = torch.empty(len(others), len(perms), dtype=torch.float64)
    for k, perm in enumerate(perms):
        st = M.build_state(permute(prepared_a, perm), [metric], topk)
        for m, other in enumerate(others):
            out[m, k] = statistic(M.layer_scores(metric, st, other))[0]
    return out


def calibrate(observed: float, null: torch.Tensor, alpha: float, smax: float) -> tuple[float, float, float]:
    """(calibrated score, add-one p-value, threshold τ) from ``T_obs`` and the ``K`` null values."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha} must be in (0, 1)")
    k = null.numel()
    combined = torch.cat([torch.tensor([observed], dtype=torch.float64), null.double().cpu()]).sort().values
    tau = float(combined[max(0, min(k, math.ceil((1 - alpha) * (k + 1)) - 1))])
    p = (1 + int((null >= observed).sum())) / (k + 1)
    cal = min(1.0, max(0.0, (observed - tau) / max(smax - tau, 1e-12)))
    return cal, p, tau
