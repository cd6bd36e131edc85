"""Measures of the wider literature beyond ReSi's first nine (registry ``metrics.yaml``): PWCCA, GULP,
rank similarity and second-order cosine similarity, batched over layer pairs like
:mod:`featx.align.metrics` (which imports :data:`PAIR`, :data:`NEEDS` and :data:`BUILDERS` from here).

Each pair function takes two :class:`~featx.align.metrics.ModelState` s (A = the first argument, as
``layer_scores``) and returns ``[La, Lb]``. Structures:

* ``pwcca`` and ``gulp`` read the thin SVD of each centred layer ``X̃ = U S Vᵀ`` (the Procrustes
  family's ``svd_u``/``svd_s``); ``pwcca`` also ``X̃ᵀ U = V S`` (``extra["pwcca_w"]``, ``[L, D, R]``,
  independent of row order) for its neuron weights.
* ``rank_similarity_knn`` reads the ordered neighbour lists; ``second_order_cosine_knn`` the
  neighbour lists and similarities plus the prepared layers (``state.layers``), from which it takes
  each model's similarities at the other model's neighbours: ``O(N·k·D)`` per layer pair, never
  ``N×N``. Both end in ``_knn`` as the other ``--topk`` measures (the reference's file-naming rule).
"""

from __future__ import annotations

import torch

from featx.align import metrics as M

#: GULP's ridge parameter λ (Boix-Adsera et al. 2022 sweep λ; 10⁻² lies between their CCA-like
#: small-λ and linear-regression-like large-λ ends) on representations scaled to tr(Σ) = 1.
GULP_LAMBDA = 1e-2


def _build_pwcca(st: M.ModelState, prepared: M.Prepared) -> None:
    """SVD of each centred layer plus ``X̃ᵀ U`` (zero-padded to the widest layer)."""
    if st.svd_u is None:
        st.svd_u, st.svd_s, st.rank = M.centred_svd(prepared)
    width = max(x.shape[1] for x in prepared)
    w = torch.zeros(len(prepared), width, st.svd_u.shape[-1], dtype=torch.float64, device=st.svd_u.device)
    for i, x in enumerate(prepared):
        act = x.double() - x.double().mean(dim=0)
        w[i, :x.shape[1]] = act.T @ st.svd_u[i]
    st.extra["pwcca_w"] = w


def _build_layers(st: M.ModelState, prepared: M.Prepared) -> None:
    st.layers = prepared


def _pwcca(a: M.ModelState, b: M.ModelState) -> torch.Tensor:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018, sec. 2.2): the canonical correlations
    ``ρ_i`` of the centred layers (``i < min(rank_A, rank_B)``), weighted by how much of A they
    account for, ``α_i = Σ_j |⟨h_i, x̃_j⟩|`` with ``h_i`` A's unit canonical variates (in sample space)
    and ``x̃_j`` A's centred neurons: ``Σ α_i ρ_i / Σ α_i``. Not symmetric: A's neurons weigh (the
    paper's first layer). Canonical pairs from the SVD ``U_Aᵀ U_B = P diag(ρ) Qᵀ`` (``h_i = U_A p_i``)."""
    w = a.extra["pwcca_w"]

    def red(m, la):
        p, rho, _ = torch.linalg.svd(m)  # [c, Lb, Ra, Ra], [c, Lb, min(Ra, Rb)]
        nc = torch.minimum(a.rank[la][:, None], b.rank[None, :])  # [c, Lb]
        keep = torch.arange(rho.shape[-1], device=rho.device) < nc[..., None]
        alpha = torch.einsum("adr,abri->abdi", w[la], p[..., :rho.shape[-1]]).abs().sum(dim=-2) * keep
        return (alpha * rho.clamp(max=1.0)).sum(dim=-1) / alpha.sum(dim=-1)
    return M._svd_products(a, b, red, per_pair=(w.shape[1] + a.svd_u.shape[-1]) * a.svd_u.shape[-1])


def _gulp(a: M.ModelState, b: M.ModelState) -> torch.Tensor:
    """GULP distance (Boix-Adsera, Lawrence, Stepaniants & Rigollet 2022, eq. 3) with ridge λ
    (:data:`GULP_LAMBDA`) on the centred layers scaled to ``tr(Σ) = 1`` (``Σ = X̃ᵀX̃ / N``):
    ``d² = tr(Σ_A,λ⁻¹ Σ_A Σ_A,λ⁻¹ Σ_A) + tr(… B …) − 2 tr(Σ_A,λ⁻¹ Σ_AB Σ_B,λ⁻¹ Σ_BA)``,
    ``Σ_λ = Σ + λI``. That is ``‖H_A − H_B‖_F`` of the ridge hat matrices ``H = U diag(g) Uᵀ``,
    ``g = σ² / (σ² + λ)`` with ``σ²`` Σ's eigenvalues, computed as
    ``Σg_A² + Σg_B² − 2‖√g_A U_Aᵀ U_B √g_B‖²``."""
    def g(st: M.ModelState) -> torch.Tensor:
        ev = st.svd_s ** 2 / (st.svd_s ** 2).sum(dim=-1, keepdim=True)
        return ev / (ev + GULP_LAMBDA)

    ga, gb = g(a), g(b)

    def red(m, la):
        cross = ((ga[la][:, None, :, None].sqrt() * m * gb[None, :, None, :].sqrt()) ** 2).sum(dim=(-2, -1))
        return (ga[la] ** 2).sum(-1)[:, None] + (gb ** 2).sum(-1)[None, :] - 2 * cross
    return M._svd_products(a, b, red).clamp(min=0).sqrt()


def _rank_similarity(a: M.ModelState, b: M.ModelState) -> torch.Tensor:
    """Rank similarity (Wang et al. 2020, "Towards Understanding Learning Representations"; as ReSi,
    Klabunde et al. 2025): per row ``i``, over the common neighbours ``j ∈ kNN_A(i) ∩ kNN_B(i)`` with
    1-based ranks ``r_A, r_B`` in the two lists, ``Σ 2 / ((1 + |r_A − r_B|)(r_A + r_B))`` divided by
    ``v_max = Σ_{t=1}^{|∩|} 1/t`` (0 for an empty intersection); the mean over rows. Neighbours as
    mutual_knn's (self excluded, similarity order)."""
    n, k = a.n, a.topk
    r = torch.arange(1, k + 1, device=a.knn.device, dtype=torch.float64)
    diff = (r[:, None] - r[None, :]).abs()
    weight = 2 / ((1 + diff) * (r[:, None] + r[None, :]))  # [k, k]: r_A = row, r_B = column
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64, device=r.device), (1 / r).cumsum(0)])
    out = []
    for sl in M._chunks(a.num_layers, b.num_layers * n * k * k):
        eq = a.knn[sl][:, None, :, :, None] == b.knn[None, :, :, None, :]  # [ca, Lb, N, k, k]
        score = (eq * weight).sum(dim=(-2, -1))
        common = eq.any(dim=-1).sum(dim=-1)
        vmax = harmonic[common]
        out.append(torch.where(common > 0, score / vmax.clamp(min=1e-300), torch.zeros_like(score)).mean(dim=-1))
    return torch.cat(out)


def _cross_similarities(x: torch.Tensor, knn: torch.Tensor) -> torch.Tensor:
    """``[c, N, k]``: ``⟨x_i, x_j⟩`` of one prepared layer ``x [N, D]`` at neighbour lists ``knn [c, N, k]``."""
    c, n, k = knn.shape
    picked = x[knn.reshape(-1)].view(c, n, k, -1)
    return torch.einsum("cnkd,nd->cnk", picked.double(), x.double())


def _second_order_cosine(a: M.ModelState, b: M.ModelState) -> torch.Tensor:
    """Second-order cosine similarity (Hamilton, Leskovec & Jurafsky 2016, "Cultural Shift or
    Linguistic Drift?", sec. 3.1): per row ``i`` the union ``U_i = kNN_A(i) ∪ kNN_B(i)``, the vectors
    ``s_A = (cos(a_i, a_j))_{j ∈ U_i}`` and ``s_B`` likewise, their cosine; the mean over rows.
    Cosines of the prepared (unit-norm) rows; neighbours as mutual_knn's (self excluded). ReSi's code
    indexes the condensed ``pdist`` vector with row indices, which is not this; featx follows the paper."""
    n, k = a.n, a.topk
    out = torch.empty(a.num_layers, b.num_layers, dtype=torch.float64, device=a.knn.device)
    for la in range(a.num_layers):
        xa, ka, va = a.layers[la], a.knn[la], a.knn_vals[la].double()  # A's sims at its own neighbours
        for sl in M._chunks(b.num_layers, n * k * (k + xa.shape[1] + max(x.shape[1] for x in b.layers))):
            kb = b.knn[sl]  # [c, N, k]
            a_at_b = _cross_similarities(xa, kb)  # A's sims at B's neighbours
            b_at_a = torch.stack([_cross_similarities(b.layers[lb], ka[None])[0] for lb in range(sl.start, sl.stop)])
            b_at_b = b.knn_vals[sl].double()
            # B's neighbours also in A's list are counted once (from A's list)
            new = ~(kb[..., :, None] == ka[None, :, None, :]).any(dim=-1)  # [c, N, k]
            dot = (va[None] * b_at_a).sum(-1) + (new * a_at_b * b_at_b).sum(-1)
            na = (va[None] ** 2).sum(-1) + (new * a_at_b ** 2).sum(-1)
            nb = (b_at_a ** 2).sum(-1) + (new * b_at_b ** 2).sum(-1)
            den = (na * nb).sqrt()
            cos = torch.where(den > 0, dot / den.clamp(min=1e-300), torch.zeros_like(dot))
            out[la, sl] = cos.mean(dim=-1)
    return out


#: metric -> pair function (merged into :data:`featx.align.metrics._PAIR`).
PAIR = {"pwcca": _pwcca, "gulp": _gulp, "rank_similarity_knn": _rank_similarity,
        "second_order_cosine_knn": _second_order_cosine}
#: metric -> the structure it reads besides its neighbours (merged into ``metrics._NEEDS``).
NEEDS = {"pwcca": "pwcca", "gulp": "svd", "second_order_cosine_knn": "layers"}
#: structure -> builder ``(state, prepared) -> None`` (``build_state`` calls it once per model).
BUILDERS = {"pwcca": _build_pwcca, "layers": _build_layers}
