"""Permutation-null calibration of the best-layer-pair score (Gröger, Wen & Brbić, ICML 2026,
"Revisiting the Platonic Representation Hypothesis: An Aristotelian View", Algorithm 2; their
package ``calibrated-similarity``'s ``calibrate_layers(..., agg="max")``).

The statistic is the maximum over the whole layer search, ``T = max_ij S[i, j]``; under the null the
rows of one side are permuted (one permutation for all its layers), so the max over layers is
calibrated too. With ``T_obs`` and the ``K`` null values ``T_k``:

* threshold ``τ`` = the ``ceil((1 - α)(K + 1))``-th smallest of ``{T_obs, T_1..T_K}``,
* add-one p-value ``(1 + #{T_k ≥ T_obs}) / (K + 1)``,
* calibrated score ``clamp((T_obs - τ) / (s_max - τ), 0, 1)``: 0 unless ``T_obs`` beats the null.

Work per permutation: none of a model's per-layer structures is recomputed. Permuting the rows of a
layer permutes what was built from it — neighbour lists (``knn'[i] = π⁻¹(knn[π(i)])``, the same sets
and order while no two of a row's first k+1 similarities tie), masks and kernels (both axes), SVD
bases (rows); thresholds, norms, singular values and self-similarities do not change — so one
prepared state per model serves every permutation (:func:`permuted_state`), scored against the
other side's state for all layer pairs at once. ``mutual_knn`` and ``jaccard_knn`` go further: all
K permutations and all layer pairs in one gather of the other model's neighbour masks
(:func:`_overlap_nulls`). Rows with tied similarities among their first k+1 (duplicate rows, or
float32-exact ties of nearly collinear features) are the exception: the tie rule (index order)
picks among the tied by their new indices, so those rows' neighbours are re-picked per permutation
from their similarity rows (:class:`Ties`, :func:`_repick`), as a rebuild would pick them; cknna,
whose ``torch.topk`` leaves tie order open, rebuilds its side per permutation then. The package's
loop recomputes both sides for every layer pair and permutation.
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
                    topk: int, state_a: M.ModelState | None = None) -> torch.Tensor:
    """``[len(others), K]``: the statistic of A's rows permuted by each ``perm`` against each state in
    ``others``, from A's one state (``state_a``, built here if not given) — see the module's note."""
    ties = tied_rows(prepared_a, topk) if M.uses_topk(metric) else None
    if metric == "cknna" and ties.count:  # its torch.topk leaves the order of ties unspecified
        return _rebuilt_nulls(metric, prepared_a, others, perms, topk)
    st = state_a if state_a is not None else M.build_state(prepared_a, [metric], topk)
    if metric in _OVERLAP and all(o.n * o.n * o.num_layers <= _MASK_BUDGET for o in others):
        return _overlap_nulls(metric, st, others, perms, ties)
    out = torch.empty(len(others), len(perms), dtype=torch.float64)
    for k, perm in enumerate(perms):
        st_k = permuted_state(st, perm, ties)
        for m, other in enumerate(others):
            out[m, k] = statistic(M.layer_scores(metric, st_k, other))[0]
    return out


def _rebuilt_nulls(metric: str, prepared_a: M.Prepared, others: list[M.ModelState], perms: list[torch.Tensor],
                   topk: int) -> torch.Tensor:
    """The permuted side rebuilt from its permuted layers, once per permutation (ties present)."""
    out = torch.empty(len(others), len(perms), dtype=torch.float64)
    for k, perm in enumerate(perms):
        st = M.build_state(permute(prepared_a, perm), [metric], topk)
        for m, other in enumerate(others):
            out[m, k] = statistic(M.layer_scores(metric, st, other))[0]
    return out


@dataclass(frozen=True)
class Ties:
    """Per layer, the rows with two equal similarities among their first ``k+1`` (self excluded) and
    their similarities to every row (self ``-inf``). Only for these can a permutation change which
    neighbours (or their order) the tie rule (index order) picks, so only these are re-picked."""

    rows: list[torch.Tensor]  # [T_l] row indices
    sims: list[torch.Tensor]  # [T_l, N]

    @property
    def count(self) -> int:
        return sum(r.numel() for r in self.rows)


def tied_rows(prepared: M.Prepared, topk: int) -> Ties:
    n = prepared[0].shape[0]
    rows, sims = [], []
    for x in prepared:
        _, vals = M.knn_blocked(x, min(topk + 1, n - 1))
        tied = (vals[:, 1:] == vals[:, :-1]).any(dim=1).nonzero().flatten()
        s = x[tied] @ x.T
        s[torch.arange(tied.numel(), device=x.device), tied] = float("-inf")
        rows.append(tied)
        sims.append(s)
    return Ties(rows, sims)


def _repick(lists: torch.Tensor, vals: torch.Tensor | None, ties: Ties | None, p: torch.Tensor, inv: torch.Tensor,
            topk: int) -> None:
    """In place: the tied rows' neighbours of ``lists [L, c, N, k]`` (new indices; ``vals`` alike)
    under the ``c`` permutations ``p`` (inverses ``inv``) ``[c, N]``, picked by the tie rule afresh."""
    if ties is None or not ties.count:
        return
    ar = torch.arange(p.shape[0], device=p.device)[:, None]
    for layer, (rows, sims) in enumerate(zip(ties.rows, ties.sims)):
        if rows.numel():
            s = sims[:, p].transpose(0, 1)  # [c, T, N]: column j is new row j
            nn = M.nearest_neighbors(s, topk)
            at = inv[:, rows]  # [c, T]: where the tied rows went
            lists[layer, ar, at] = nn
            if vals is not None:
                vals[layer, ar, at] = s.gather(-1, nn).to(vals.dtype)


def permuted_state(st: M.ModelState, perm: torch.Tensor, ties: Ties | None = None) -> M.ModelState:
    """The state of the same layers with rows in the order ``perm`` (row ``i`` is old row
    ``perm[i]``), from ``st`` by index operations alone; ``ties`` (:func:`tied_rows`) re-picked."""
    n = st.n
    dev = next((t.device for t in (st.knn, st.svd_u, st.basis, *st.kernels.values()) if t is not None),
               perm.device)
    p = perm.to(dev)
    inv = torch.empty_like(p)
    inv[p] = torch.arange(n, device=dev)
    pos = (p[:, None] * n + p[None, :]).reshape(-1)  # new (i, j) -> old (p_i, p_j), flattened
    done: dict[int, torch.Tensor] = {}

    def once(t: torch.Tensor | None, fn) -> torch.Tensor | None:
        if t is None:
            return None
        if id(t) not in done:
            done[id(t)] = fn(t)
        return done[id(t)]

    lists = lambda t: inv[t[:, p]]  # noqa: E731 - [L, N, k] neighbour indices
    rows = lambda t: t[:, p]  # noqa: E731 - [L, N, ...] per-row values
    out = M.ModelState(n=n, num_layers=st.num_layers, topk=st.topk, self_sim=st.self_sim, stats=st.stats,
                       extra=st.extra, svd_s=st.svd_s, rank=st.rank)
    out.knn, out.cknna_knn = once(st.knn, lists), once(st.cknna_knn, lists)
    out.knn_vals, out.cknna_vals = once(st.knn_vals, rows), once(st.cknna_vals, rows)
    if out.knn is not None:
        _repick(out.knn[:, None], out.knn_vals[:, None], ties, p[None], inv[None], st.topk)
    out.basis, out.svd_u = once(st.basis, rows), once(st.svd_u, rows)
    # cknna's own neighbours (where they differ from knn) are never re-picked: cknna with ties is rebuilt
    out.cknna_mask = once(st.cknna_mask, lambda t: t.index_select(0, pos))
    out.kernels = {name: (k.index_select(0, pos) if name == "raw"  # position-major
                          else k.index_select(1, _triu_positions(p) if name == "rdm" else pos))
                   for name, k in st.kernels.items()}
    if st.layers is not None:
        out.layers = permute(st.layers, perm)
    return out


def _triu_positions(p: torch.Tensor) -> torch.Tensor:
    """For the upper-triangle vectors (``i < j``, row-major) of ``rdm``: new entry -> old entry."""
    n = p.numel()
    iu = torch.triu_indices(n, n, 1, device=p.device)
    a, b = torch.minimum(p[iu[0]], p[iu[1]]), torch.maximum(p[iu[0]], p[iu[1]])
    return a * n - a * (a + 1) // 2 + (b - a - 1)


_OVERLAP = ("mutual_knn", "jaccard_knn")
_MASK_BUDGET = 1 << 30  # bytes of the other side's [N*N, L] neighbour masks for the all-permutation gather
_NULL_BUDGET = 1 << 24  # elements of one [K_chunk, La, N, k, Lb] gather


def _overlap_nulls(metric: str, st: M.ModelState, others: list[M.ModelState], perms: list[torch.Tensor],
                   ties: Ties | None) -> torch.Tensor:
    """mutual_knn / jaccard_knn for every permutation and layer pair at once: A's permuted neighbour
    lists ``[K, La, N, k]`` looked up in B's neighbour masks (``|knn_A'(i) ∩ knn_B(i)|`` per row)."""
    n, k, la = st.n, st.topk, st.num_layers
    dev = st.knn.device
    p = torch.stack(perms).to(dev)  # [K, N]
    inv = torch.empty_like(p)
    inv.scatter_(1, p, torch.arange(n, device=dev).expand_as(p).contiguous())
    rows = torch.arange(n, device=dev).view(1, 1, n, 1) * n
    out = torch.empty(len(others), len(perms), dtype=torch.float64)
    for m, other in enumerate(others):
        mask = M.knn_masks(other.knn)  # [N*N, Lb]
        for sl in M._chunks(len(perms), la * n * k * other.num_layers, _NULL_BUDGET):
            pk, ik = p[sl], inv[sl]  # [c, N]
            lists = st.knn[:, pk]  # [La, c, N, k]: A's lists at the permuted rows, old indices
            lists = torch.gather(ik[None].expand(la, -1, -1), 2, lists.reshape(la, pk.shape[0], n * k))
            lists = lists.view(la, pk.shape[0], n, k)
            _repick(lists, None, ties, pk, ik, k)
            pos = rows + lists.transpose(0, 1)  # [c, La, N, k]
            hits = mask.index_select(0, pos.reshape(-1)).view(*pos.shape, -1).sum(dim=3, dtype=torch.int64)
            if metric == "mutual_knn":  # [c, La, N, Lb] -> [c, La, Lb]
                scores = hits.sum(dim=2).double() / (n * k)
            else:
                scores = (hits.double() / (2 * k - hits)).mean(dim=2)
            out[m, sl] = scores.flatten(1).amax(dim=1).cpu()
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
