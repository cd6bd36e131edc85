"""The reference's alignment metrics (platonic-rep ``metrics.py``), batched over layers.

The reference scores one layer pair at a time: for every layer ``i`` of model A and every layer
``j`` of model B it recomputes both k-NN graphs (or kernels) and the metric. Here each model's
per-layer structures are computed once (:func:`build_state`: k-NN indices, centred kernels or
centred layers, SVD bases) and a model pair is scored for all its layer pairs at once
(:func:`layer_scores`), mostly as gathers and matrix products:

* ``mutual_knn``: ``|knn_A(i) ∩ knn_B(i)|`` for all layer pairs, from the two neighbour lists.
* ``cycle_knn``: A's neighbour lists gathered at B's neighbours of ``i``, compared with ``i``.
  Neighbours of a neighbours-only state come from row blocks (:func:`knn_blocked`), so every k-NN
  measure but cknna holds ``O(N·k)`` per layer, never ``N×N``.
* ``lcs_knn`` / ``edit_distance_knn``: the dynamic programmes run row by row over all
  (layer pair, sample) sequences at once (one ``cummax``/``cummin`` per row).
* ``cka`` / ``unbiased_cka``: centred (resp. U-centred) kernels per layer, one matrix product per
  model pair (HSIC = Frobenius inner product of centred kernels; the unbiased estimator equals the
  inner product of U-centred kernels / n(n-3), Song et al. 2012; Székely & Rizzo 2014). Past
  :data:`_KERNEL_STATE_BUDGET` no kernel is formed: the same inner products come from ``D×D``
  feature products accumulated over row blocks (:func:`kernel_inner`).
* ``cknna``: the unbiased HSIC of the masked kernels, expanded into sums over the (sparse)
  intersection of the two neighbour sets.
* ``svcca``: canonical correlations of the two top-``cca_dim`` SVD subspaces = singular values of
  ``U_Aᵀ U_B``.

The measures beyond the reference's (registry ``metrics.yaml``, each pair function's docstring gives
its source's definition) follow the same pattern: ``jaccard_knn`` from the neighbour masks; the
Procrustes family (orthogonal Procrustes, angular shape metric, linear regression, eigenspace
overlap) from one thin SVD per centred layer (all are functions of ``U_Aᵀ U_B`` and the singular
values, one batched product per model pair); ``rsa`` and ``distance_correlation`` from per-layer
RDM vectors / double-centred distance matrices, one product as cka; the concentricity, uniformity and
magnitude differences from one statistic per layer. Distances' best layer pair is the minimum (:func:`best_of`).

A model's features are ``[N, L, D]`` or a list of ``[N, D_l]`` layers whose widths may differ (the
reference's list input, e.g. a convnet's stages); every structure above is per layer, so every
metric takes layer pairs of any widths (svcca: at least ``cca_dim`` wide, as the reference's CCA).
Neighbours are ordered as the reference's ``argsort`` orders them (ties between duplicate rows in
index order); cknna's are taken with ``torch.topk`` as the reference's cknna takes them.

``layer_scores(metric, A, B)[i, j]`` equals ``AlignmentMetrics.measure(metric, A_i, B_j, topk)``
of the reference (argument order as there; it matters only for ``cycle_knn``). The one deliberate
difference: ``svcca`` uses the exact top-``cca_dim`` singular subspace where the reference draws a
randomised ``torch.svd_lowrank(q=cca_dim, niter=2)`` approximation of it (so the reference's value
is not even reproducible run to run), and closed-form CCA in place of sklearn's iterative one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from featx.align import measures_extra as _extra
from featx.align import registry

#: The registry (``metrics.yaml``): every measure, and the reference's among them.
REGISTRY, METRICS, REFERENCE_METRICS = registry.REGISTRY, registry.METRICS, registry.REFERENCE_METRICS

#: Reused for the swapped pair: the reference treats every metric but cycle_knn as symmetric
#: (measure_alignment.py); cknna only in its own symmetric mode.
SYMMETRIC = frozenset(m for m, i in REGISTRY.items() if i.symmetric != "no")
#: Symmetric by definition. The reference's cknna is not quite: its unbiased HSIC of the two masked
#: kernels has a term sum(P @ Q) that changes when P and Q (not symmetric) swap.
EXACTLY_SYMMETRIC = frozenset(m for m, i in REGISTRY.items() if i.symmetric == "exact")
KERNEL_METRICS = ("cka", "unbiased_cka", "cknna")
DEFAULT_Q = 0.95
DEFAULT_CCA_DIM = 10

OUTLIER_MODES = ("exact", "quantile")

#: A model's features as stored: ``[N, L, D]`` (one width) or a list of ``[N, D_l]`` layers (any widths).
Features = torch.Tensor | list[torch.Tensor]
#: Prepared layers: ``[L, N, D]``, or a list of ``[N, D_l]``.
Prepared = torch.Tensor | list[torch.Tensor]

_QUANTILE_BUDGET = 1 << 24  # elements per torch.quantile call
_GATHER_BUDGET = 1 << 22  # elements per intermediate [layers_a, layers_b, N, k] chunk
_KERNEL_BUDGET = 1 << 25  # elements per [layers, N, N] chunk while building states


def uses_topk(metric: str) -> bool:
    """The registry's ``topk`` (the reference's rule ``'knn' in metric``, which is true for cknna)."""
    return REGISTRY[metric].topk


def is_distance(metric: str) -> bool:
    return REGISTRY[metric].kind == "distance"


def result_name(metric: str, topk: int) -> str:
    """File stem of a result as the reference names it: ``mutual_knn_k10``, ``cka``."""
    return f"{metric}_k{topk}" if uses_topk(metric) else metric


# -- preparation ------------------------------------------------------------------------------------

def outlier_threshold(feats: torch.Tensor, q: float = DEFAULT_Q, outliers: str = "exact") -> torch.Tensor:
    """The clamp threshold of the reference's ``remove_outliers``. ``exact`` (its ``--precise`` and
    ``platonic.Alignment``): sort |x| over the whole tensor and take index ``int(q * numel)`` (found
    with ``kthvalue``: the same value without the full sort). ``quantile`` (``measure_alignment.py``
    without ``--precise``): ``torch.quantile`` of |x| per row (sample), averaged over rows."""
    if outliers == "quantile":
        flat = feats.abs().flatten(start_dim=1)
        step = max(1, _QUANTILE_BUDGET // max(1, flat.shape[1]))  # torch.quantile refuses huge inputs
        return torch.cat([torch.quantile(flat[s:s + step], q, dim=1) for s in range(0, flat.shape[0], step)]).mean()
    if outliers != "exact":
        raise ValueError(f"unknown outlier mode {outliers!r}; choose one of {', '.join(OUTLIER_MODES)}")
    flat = feats.reshape(-1).abs()
    idx = int(q * feats.numel())
    try:
        return flat.kthvalue(idx + 1).values
    except RuntimeError:  # very large tensors on some backends: fall back to the reference's sort
        return flat.sort().values[idx]


def _clamp(x: torch.Tensor, q: float, outliers: str) -> torch.Tensor:
    if q == 1:
        return x
    t = outlier_threshold(x, q, outliers)
    return x.clamp(-t, t)


def prepare_features(feats: Features, q: float = DEFAULT_Q, device: torch.device | str | None = None,
                     layers: list[int] | None = None, outliers: str = "exact") -> Prepared:
    """Features → float32 layers, clamped and L2-normalised as the reference's ``prepare_features``
    + ``compute_score`` do. ``feats [N, L, D]`` (or ``[N, D]``) → ``[L, N, D]``, one threshold over the
    model's whole tensor; a list of ``[N, D_l]`` layers (widths may differ) → a list of ``[N, D_l]``,
    one threshold per layer (the reference prepares a list layer by layer). ``layers`` selects layers
    after the clamp (the threshold never depends on the selection)."""
    if isinstance(feats, (list, tuple)):
        xs = [f.to(device=device).float() if device is not None else f.float() for f in feats]
        if not xs or any(x.dim() != 2 for x in xs) or len({x.shape[0] for x in xs}) != 1:
            shapes = ", ".join(str(tuple(x.shape)) for x in xs) or "none"
            raise ValueError(f"a feature list must hold [N, D] layers with one N, got {shapes}")
        xs = [_clamp(x, q, outliers) for x in xs]
        picked = layers if layers is not None else range(len(xs))
        return [F.normalize(xs[i], p=2, dim=-1).contiguous() for i in picked]
    x = feats.to(device=device) if device is not None else feats
    x = x.float()
    if x.dim() == 2:
        x = x[:, None, :]
    if x.dim() != 3:
        raise ValueError(f"features must be [N, L, D], [N, D] or a list of [N, D] layers, "
                         f"got shape {tuple(feats.shape)}")
    x = _clamp(x, q, outliers).transpose(0, 1)
    if layers is not None:
        x = x[layers]
    return F.normalize(x, p=2, dim=-1).contiguous()


def num_layers(feats: Features) -> int:
    """Layers of a feature file's ``feats``: a list's length, ``L`` of ``[N, L, D]``, 1 for ``[N, D]``."""
    if isinstance(feats, (list, tuple)):
        return len(feats)
    return feats.shape[1] if feats.dim() == 3 else 1


def num_rows(feats: Features) -> int:
    return feats[0].shape[0] if isinstance(feats, (list, tuple)) else feats.shape[0]


# -- per-model state --------------------------------------------------------------------------------

@dataclass
class ModelState:
    """What the metrics need of one model's prepared layers, computed once and reused for every
    pair the model takes part in. N×N structures are flattened (``i*N + j``); the ones only gathered
    from (masks, cknna's raw kernel) are position-major ``[N*N, L]``, the ones multiplied (centred
    kernels) layer-major ``[L, N*N]``. Memory: about L·N² bytes per mask set, 4·L·N² per kernel."""

    n: int
    num_layers: int
    topk: int = 0
    knn: torch.Tensor | None = None  # [L, N, k] int64, neighbours by decreasing similarity, self excluded
    knn_vals: torch.Tensor | None = None  # [L, N, k] similarities at those neighbours
    knn_recall: list[float] | None = None  # per layer, where neighbours are approximate: recall@k vs exact
    kernels: dict[str, torch.Tensor] = field(default_factory=dict)  # 'centered'/'ucentered' [L, N*N]; 'raw' [N*N, L]
    # cka/unbiased_cka beyond the kernel budget: the layers whose linear kernels they are (centred for
    # 'centered', as prepared for 'ucentered'), used through D×D products (:func:`kernel_inner`)
    linear: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    self_sim: dict[str, torch.Tensor] = field(default_factory=dict)  # metric -> [L] float64
    basis: torch.Tensor | None = None  # [L, N, cca_dim] float64 (svcca)
    # thin SVD of each centred layer, zero-padded to the widest rank R: U [L, N, R], S [L, R] float64
    # (U S is the layer up to a rotation of its columns, all the Procrustes family needs), rank [L]
    svd_u: torch.Tensor | None = None
    svd_s: torch.Tensor | None = None
    rank: torch.Tensor | None = None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # per-layer statistics [L] (or [L, N]) float64
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # structures of measures_extra's measures
    layers: Prepared | None = None  # the prepared layers, kept only where calibration permutes them
    # cknna's neighbours as the reference picks them (torch.topk): the same tensors as knn/knn_vals
    # unless duplicate rows tie at the k-th place and topk keeps another one of them
    cknna_knn: torch.Tensor | None = None
    cknna_vals: torch.Tensor | None = None
    cknna_mask: torch.Tensor | None = None

    def nbytes(self) -> int:
        tensors = [self.knn, self.knn_vals, self.basis, self.cknna_knn, self.cknna_vals, self.cknna_mask,
                   self.svd_u, self.svd_s, self.rank, *self.kernels.values(), *self.self_sim.values(),
                   *self.stats.values(), *self.extra.values(), *(t for layers in self.linear.values() for t in layers)]
        unique = {id(t): t for t in tensors if t is not None}
        return sum(t.numel() * t.element_size() for t in unique.values())


def _needs(metrics) -> set[str]:
    need: set[str] = set()
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose one of {', '.join(METRICS)}")
        if uses_topk(m):
            need.add("cknna_knn" if m == "cknna" else "knn")
        if m in _NEEDS:
            need.add(_NEEDS[m])
    return need


_SVD_METRICS = ("orthogonal_procrustes", "angular_shape_metric", "linear_regression", "eigenspace_overlap")
# metric -> the structure of a model's state it reads, besides its neighbours (``build_state``)
_NEEDS = {"cka": "centered", "unbiased_cka": "ucentered", "cknna": "raw", "svcca": "basis",
          "rsa": "rdm", "distance_correlation": "dcentered", "concentricity_difference": "concentricity",
          "uniformity_difference": "uniformity", "magnitude_difference": "magnitude",
          **{m: "svd" for m in _SVD_METRICS}}
_NEEDS.update(_extra.NEEDS)
_GRAM_NEEDS = {"knn", "cknna_knn", "raw", "centered", "ucentered", "rdm", "dcentered", "uniformity"}
_BLOCK_BUDGET = 1 << 24  # elements of one [block, N] similarity block of the row-blocked k-NN
#: Bytes of N×N kernels one model's state may hold for cka/unbiased_cka (4·L·N²); beyond it the
#: kernels are never formed and every inner product goes through D×D feature products instead.
_KERNEL_STATE_BUDGET = 1 << 30
_LINEAR = ("centered", "ucentered")


def kernel_route(num_layers: int, n: int, budget: int | None = None) -> bool:
    """Whether cka/unbiased_cka keep N×N kernels (fast per pair: ``N²`` per layer pair) or, past the
    budget, the layers themselves (``N·D_a·D_b`` per layer pair, memory ``D×D``)."""
    return 4 * num_layers * n * n <= (budget or _KERNEL_STATE_BUDGET)


def knn_blocked(x: torch.Tensor, topk: int, budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-NN of one ``[N, D]`` layer by row blocks: each block's similarities to all rows, self
    excluded, neighbours picked by :func:`nearest_neighbors` row by row (so ties as the dense path).
    Memory ``O(N·k + block·N)``, never ``N×N``. Returns (indices, similarities) ``[N, k]``."""
    n = x.shape[0]
    block = max(1, (budget or _BLOCK_BUDGET) // max(1, n))
    idx, vals = [], []
    for s in range(0, n, block):
        hat = x[s:s + block] @ x.T
        rows = torch.arange(hat.shape[0], device=x.device)
        hat[rows, rows + s] = float("-inf")
        i = nearest_neighbors(hat, topk)
        idx.append(i)
        vals.append(hat.gather(-1, i))
        del hat
    return torch.cat(idx), torch.cat(vals)


def _knn_search(x: torch.Tensor, topk: int, knn_index: str) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    if knn_index == "exact":
        return (*knn_blocked(x, topk), None)
    from featx.align import ann

    if knn_index not in ann.KNN_INDEXES:
        raise ValueError(f"unknown knn index {knn_index!r}; choose one of {', '.join(ann.KNN_INDEXES)}")
    return ann.hnsw_knn(x, topk)


def _layer_chunk(n: int, budget: int = _KERNEL_BUDGET) -> int:
    return max(1, budget // max(1, n * n))


def _grams(layers: Prepared) -> torch.Tensor:
    """``[c, N, N]`` inner products of each layer (a stacked chunk, or a list of any widths)."""
    if isinstance(layers, torch.Tensor):
        return torch.bmm(layers, layers.transpose(1, 2))
    return torch.stack([x @ x.T for x in layers])


def nearest_neighbors(hat: torch.Tensor, topk: int) -> torch.Tensor:
    """The reference's ``compute_nearest_neighbors`` order on similarities with self excluded:
    ``argsort(descending=True)`` — ties (duplicate rows) in index order, as torch's CPU sort leaves
    them; a stable sort makes that the rule on every device. ``topk`` (fast, tie order unspecified)
    serves every row whose first k+1 similarities are distinct; only rows with a tie are sorted."""
    vals, idx = hat.topk(topk + 1, dim=-1)  # topk < N: the (k+1)-th exists (at worst the -inf self)
    idx = idx[..., :topk]
    tied = (vals[..., 1:] == vals[..., :-1]).any(dim=-1)
    if tied.any():
        idx[tied] = hat[tied].argsort(dim=-1, descending=True, stable=True)[..., :topk]
    return idx


def build_state(prepared: Prepared, metrics, topk: int = 10, cca_dim: int = DEFAULT_CCA_DIM,
                knn_index: str = "exact") -> ModelState:
    """Everything ``metrics`` need of one model, from its prepared layers (``[L, N, D]`` or a list of
    ``[N, D_l]``: every structure below is per layer, so widths may differ). ``knn_index``: exact
    neighbours, or ``hnsw`` (approximate, :mod:`featx.align.ann`; cknna keeps exact ones)."""
    L, n = len(prepared), prepared[0].shape[0]
    need = _needs(metrics)
    if need & {"knn", "cknna_knn"} and not 1 <= topk < n:
        raise ValueError(f"topk {topk} must be between 1 and N-1 = {n - 1}")
    st = ModelState(n=n, num_layers=L, topk=topk)
    if need & set(_LINEAR) and not kernel_route(L, n):
        _set_linear(st, prepared, need & set(_LINEAR))
        need -= set(_LINEAR)
    knn, vals, cknn, cvals = [], [], [], []
    kernels = {k: [] for k in ("raw", "centered", "ucentered", "rdm", "dcentered") if k in need}
    uniformity = []
    if "knn" in need and (knn_index != "exact" or need & _GRAM_NEEDS == {"knn"}):  # no N×N matrix
        found = [_knn_search(x, topk, knn_index) for x in prepared]
        knn, vals = [torch.stack([f[0] for f in found])], [torch.stack([f[1] for f in found])]
        if knn_index != "exact":
            st.knn_recall = [f[2] for f in found]
        need = need - {"knn"}
    if need & _GRAM_NEEDS:
        step = _layer_chunk(n)
        for s in range(0, L, step):
            gram = _grams(prepared[s:s + step])  # [c, N, N] inner products
            if need & {"knn", "cknna_knn"}:
                hat = gram.clone() if kernels else gram
                hat.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # self excluded
                if "knn" in need:
                    i = nearest_neighbors(hat, topk)
                    knn.append(i)
                    vals.append(hat.gather(-1, i))
                if "cknna_knn" in need:  # the reference's cknna: torch.topk on the same matrix
                    v, i = hat.topk(topk, dim=-1)
                    cvals.append(v)
                    cknn.append(i)
                del hat
            if need & {"rdm", "dcentered", "uniformity"}:
                sq = _sq_distances(gram)
                if "uniformity" in need:  # log mean over pairs i < j of exp(-2 d_ij^2)
                    iu = torch.triu_indices(n, n, 1, device=gram.device)
                    uniformity.append(torch.logsumexp(-2 * sq[:, iu[0], iu[1]].double(), dim=1) - math.log(iu.shape[1]))
                if "rdm" in kernels:
                    kernels["rdm"].append(_rdm_vectors(sq.sqrt()))
                if "dcentered" in kernels:
                    kernels["dcentered"].append(_center(sq.sqrt().double()).reshape(gram.shape[0], -1))
                del sq
            if not kernels:
                continue
            if "raw" in kernels:
                kernels["raw"].append(gram.reshape(gram.shape[0], -1).clone())
            if "centered" in kernels:
                kernels["centered"].append(_center(gram).reshape(gram.shape[0], -1))
            if "ucentered" in kernels:
                kernels["ucentered"].append(_ucenter(gram).reshape(gram.shape[0], -1))
            del gram
    if knn:
        st.knn, st.knn_vals = torch.cat(knn), torch.cat(vals)
    for name, parts in kernels.items():
        st.kernels[name] = torch.cat(parts)
    if "raw" in st.kernels:  # gathered at neighbour positions: position-major like the masks
        st.kernels["raw"] = st.kernels["raw"].T.contiguous()
    if cknn:
        _set_cknna_neighbours(st, torch.cat(cknn), torch.cat(cvals))
    if "centered" in need:
        st.self_sim["cka"] = _rowwise_sq(st.kernels["centered"])
    if "ucentered" in need:
        st.self_sim["unbiased_cka"] = _rowwise_sq(st.kernels["ucentered"]) / (n * (n - 3))
    if st.linear:
        _set_linear_self_sim(st)
    if "cknna" in metrics:
        st.self_sim["cknna"] = torch.cat([
            _cknna_hsic(st.cknna_knn[l:l + 1], st.cknna_vals[l:l + 1], st.cknna_mask,
                        torch.tensor([l], device=st.cknna_knn.device), st.cknna_mask[:, l:l + 1],
                        st.kernels["raw"][:, l:l + 1]).reshape(1)
            for l in range(L)])
    if "basis" in need:
        st.basis = svcca_basis(prepared, cca_dim)
    if "svd" in need:
        st.svd_u, st.svd_s, st.rank = centred_svd(prepared)
    if "dcentered" in need:
        st.self_sim["distance_correlation"] = _rowwise_sq(st.kernels["dcentered"]) / (n * n)
    if uniformity:
        st.stats["uniformity"] = torch.cat(uniformity)
    if "magnitude" in need:
        st.stats["magnitude"] = torch.stack([x.double().mean(dim=0).norm() for x in prepared])
    if "concentricity" in need:
        st.stats["concentricity"] = torch.stack([
            F.cosine_similarity(x.double(), x.double().mean(dim=0, keepdim=True), dim=1).mean() for x in prepared])
    for name in need & _extra.BUILDERS.keys():
        _extra.BUILDERS[name](st, prepared)
    return st


def _set_linear(st: ModelState, prepared: Prepared, names: set[str]) -> None:
    """cka/unbiased_cka past the kernel budget: keep the layers whose linear kernels they are
    (centred layers for 'centered': ``H K H = X_c X_cᵀ``), and for 'ucentered' what the unbiased
    estimator needs besides ``<K, L>``: the diagonal ``k_ii``, the zero-diagonal row sums ``K̃1``
    and their total (all ``O(N)`` per layer)."""
    layers = list(prepared)
    if "centered" in names:
        st.linear["centered"] = [(x - x.mean(dim=0)).contiguous() for x in layers]
    if "ucentered" in names:
        st.linear["ucentered"] = layers
        xs = [x.double() for x in layers]
        diag = torch.stack([(x ** 2).sum(dim=1) for x in xs])  # [L, N]
        rows = torch.stack([x @ x.sum(dim=0) for x in xs]) - diag  # K̃1 = X(Xᵀ1) - diag(K)
        st.stats.update(k_diag=diag, k_rows=rows, k_sum=rows.sum(dim=1))


def _set_linear_self_sim(st: ModelState) -> None:
    n = st.n
    for name, metric in (("centered", "cka"), ("ucentered", "unbiased_cka")):
        if name in st.linear:
            self_inner = torch.cat([_feature_inner(st, st, name, slice(l, l + 1), slice(l, l + 1)).reshape(1)
                                    for l in range(st.num_layers)])
            st.self_sim[metric] = self_inner / ((n * (n - 3)) if name == "ucentered" else 1)


def gram_products(xa: list[torch.Tensor], xb: list[torch.Tensor], budget: int = _GATHER_BUDGET) -> torch.Tensor:
    """``[La, Lb]`` float64 ``||X_aᵀ X_b||_F² = <X_a X_aᵀ, X_b X_bᵀ>``: the Frobenius inner product of
    two linear kernels from ``D_a × D_b`` products accumulated (float64) over row blocks, never N×N."""
    n = xa[0].shape[0]
    out = torch.empty(len(xa), len(xb), dtype=torch.float64, device=xa[0].device)
    for i, p in enumerate(xa):
        for j, q in enumerate(xb):
            step = max(1, budget // (p.shape[1] + q.shape[1]))
            cross = torch.zeros(p.shape[1], q.shape[1], dtype=torch.float64, device=p.device)
            for s in range(0, n, step):
                cross += (p[s:s + step].T @ q[s:s + step]).double()
            out[i, j] = (cross ** 2).sum()
    return out


def _kernel_feature_inner(kern: torch.Tensor, xb: list[torch.Tensor], n: int) -> torch.Tensor:
    """``[La, Lb]`` ``<K_a, X_b X_bᵀ> = Σ (K_a X_b) ∘ X_b`` for A's flattened kernels ``[La, N*N]``."""
    return torch.stack([torch.stack([((k.view(n, n) @ x) * x).sum() for x in xb]) for k in kern]).double()


def _feature_inner(a: ModelState, b: ModelState, name: str, la: slice = slice(None), lb: slice = slice(None)
                   ) -> torch.Tensor:
    """``<C(K_a), C(K_b)>`` (C: double centring for 'centered', U-centring for 'ucentered') of A's
    layers ``la`` and B's ``lb`` from their layers alone. Centring is a projection, so
    ``<HK_aH, HK_bH> = ||X_caᵀ X_cb||²``; the U-centred product is the unbiased estimator's numerator
    (Song et al. 2012, eq. 5): ``tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·(K̃1)ᵀ(L̃1)`` with
    ``tr(K̃L̃) = <K, L> - Σ k_ii l_ii``."""
    inner = gram_products(a.linear[name][la], b.linear[name][lb])
    if name == "centered":
        return inner
    n, sa, sb = a.n, a.stats, b.stats
    return (inner - sa["k_diag"][la] @ sb["k_diag"][lb].T
            + sa["k_sum"][la][:, None] * sb["k_sum"][lb][None, :] / ((n - 1) * (n - 2))
            - 2 * (sa["k_rows"][la] @ sb["k_rows"][lb].T) / (n - 2))


def kernel_inner(a: ModelState, b: ModelState, name: str) -> torch.Tensor:
    """``[La, Lb]`` float64 inner products of the two models' centred ('centered') or U-centred
    ('ucentered') kernels, whichever form each state holds them in: both N×N kernels, one matrix
    product; both layers, :func:`_feature_inner`; one of each, ``<C(K_a), L_b>`` (the centring of
    one side suffices, it is a projection)."""
    ka, kb = a.kernels.get(name), b.kernels.get(name)
    if ka is not None and kb is not None:
        return (ka @ kb.T).double()
    if ka is not None:
        return _kernel_feature_inner(ka, b.linear[name], a.n)
    if kb is not None:
        return _kernel_feature_inner(kb, a.linear[name], a.n).T
    return _feature_inner(a, b, name)


def _sq_distances(gram: torch.Tensor) -> torch.Tensor:
    """``[c, N, N]`` squared Euclidean distances from inner products, clamped at 0, exact 0 diagonal."""
    diag = gram.diagonal(dim1=1, dim2=2)
    sq = (diag[:, :, None] + diag[:, None, :] - 2 * gram).clamp(min=0)
    sq.diagonal(dim1=1, dim2=2).zero_()
    return sq


def _rdm_vectors(dist: torch.Tensor) -> torch.Tensor:
    """Upper triangles of ``[c, N, N]`` RDMs, centred and scaled to unit norm (float64), so that
    the Pearson correlation of two RDMs is the inner product of their vectors."""
    n = dist.shape[-1]
    iu = torch.triu_indices(n, n, 1, device=dist.device)
    v = dist[:, iu[0], iu[1]].double()
    v = v - v.mean(dim=1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True)


def centred_svd(prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``X - mean = U S Vᵀ`` of each layer in float64, singular values below float32's
    resolution (``s_max · max(N, D) · eps32``, numpy's ``matrix_rank`` rule) dropped, zero-padded
    to the widest rank: ``U [L, N, R]``, ``S [L, R]``, ``rank [L]``. Every measure of the Procrustes
    family is a function of ``U_Aᵀ U_B`` and the two ``S``, whatever the layers' widths."""
    us, ss = [], []
    for x in prepared:
        act = x.double() - x.double().mean(dim=0)
        u, sv, _ = torch.linalg.svd(act, full_matrices=False)
        keep = sv > sv[0] * max(act.shape) * torch.finfo(torch.float32).eps if sv.numel() else sv > 0
        us.append(u[:, keep])
        ss.append(sv[keep])
    r = max(1, max(s.numel() for s in ss))
    n = prepared[0].shape[0]
    u_out = torch.zeros(len(us), n, r, dtype=torch.float64, device=prepared[0].device)
    s_out = torch.zeros(len(us), r, dtype=torch.float64, device=prepared[0].device)
    for i, (u, sv) in enumerate(zip(us, ss)):
        u_out[i, :, :sv.numel()], s_out[i, :sv.numel()] = u, sv
    return u_out, s_out, torch.tensor([s.numel() for s in ss], device=prepared[0].device)


def _set_cknna_neighbours(st: ModelState, knn: torch.Tensor, vals: torch.Tensor) -> None:
    """cknna uses only the neighbour *set*; share the other metrics' tensors where the sets agree."""
    if st.knn is not None and torch.equal(st.knn.sort(dim=-1).values, knn.sort(dim=-1).values):
        st.cknna_knn, st.cknna_vals = st.knn, st.knn_vals
        st.cknna_mask = knn_masks(st.knn)
    else:
        st.cknna_knn, st.cknna_vals, st.cknna_mask = knn, vals, knn_masks(knn)


def knn_masks(knn: torch.Tensor) -> torch.Tensor:
    """``[L, N, k]`` neighbour indices → ``[N*N, L]`` bool masks, position-major (entry
    ``[i*N + j, l]`` marks j in knn_l(i)), so that one gathered position brings all layers at once."""
    L, n, k = knn.shape
    mask = torch.zeros(L, n * n, dtype=torch.bool, device=knn.device)
    rows = torch.arange(n, device=knn.device).view(1, n, 1) * n
    mask.scatter_(1, (rows + knn).reshape(L, n * k), True)
    return mask.T.contiguous()


def _center(gram: torch.Tensor) -> torch.Tensor:
    """H K H for a batch of kernels (H = I - 11ᵀ/n)."""
    row = gram.mean(dim=2, keepdim=True)
    col = gram.mean(dim=1, keepdim=True)
    tot = gram.mean(dim=(1, 2), keepdim=True)
    return gram - row - col + tot


def _ucenter(gram: torch.Tensor) -> torch.Tensor:
    """U-centred kernels: <U(K), U(L)> / (n(n-3)) is the reference's ``hsic_unbiased(K, L)``."""
    n = gram.shape[-1]
    kt = gram.clone()
    kt.diagonal(dim1=1, dim2=2).zero_()
    r = kt.sum(dim=2, keepdim=True)  # [c, N, 1]
    s = r.sum(dim=1, keepdim=True)  # [c, 1, 1]
    u = kt - r / (n - 2) - r.transpose(1, 2) / (n - 2) + s / ((n - 1) * (n - 2))
    u.diagonal(dim1=1, dim2=2).zero_()
    return u


def _rowwise_sq(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([(row.double() ** 2).sum() for row in x])


def svcca_basis(prepared: Prepared, cca_dim: int = DEFAULT_CCA_DIM) -> torch.Tensor:
    """Top-``cca_dim`` left singular vectors of each layer after the reference's standardisation
    (centre, divide by unbiased std + 1e-8), float64 ``[L, N, cca_dim]``. Every layer must have at
    least ``cca_dim`` rows and columns (the reference's ``svd_lowrank``/CCA fail on narrower ones)."""
    out = []
    for x in prepared:
        if min(x.shape) < cca_dim:
            raise ValueError(f"svcca needs layers of at least {cca_dim} rows and {cca_dim} features; "
                             f"one layer is {tuple(x.shape)}: drop svcca for these features")
        act = x.double()
        act = act - act.mean(dim=0)
        act = act / (act.std(dim=0) + 1e-8)
        out.append(_top_left_singular(act, cca_dim))
    return torch.stack(out)


def _top_left_singular(act: torch.Tensor, c: int) -> torch.Tensor:
    """``[N, c]`` top-``c`` left singular vectors of ``act`` from the smaller of its two Gram
    matrices: the ``D×D`` covariance ``actᵀ act = V S² Vᵀ`` (then ``U = act V / S``; N·D² work, no
    ``N×D`` factor) or, when ``D > N``, ``act actᵀ = U S² Uᵀ`` itself. Falls back to the thin SVD where
    the ``c``-th singular value is too small for the squared form's precision (rank below ``c``)."""
    n, d = act.shape
    evals, evecs = torch.linalg.eigh(act.T @ act if d <= n else act @ act.T)  # ascending
    top, sv = evecs[:, -c:].flip(-1), evals[-c:].flip(-1).clamp(min=0).sqrt()
    if not sv[-1] > sv[0] * 1e-4:
        return torch.linalg.svd(act, full_matrices=False)[0][:, :c]
    return act @ top / sv if d <= n else top


# -- pair scores ------------------------------------------------------------------------------------

def layer_scores(metric: str, a: ModelState, b: ModelState) -> torch.Tensor:
    """``[La, Lb]`` float64: entry ``[i, j]`` is the reference's ``measure(metric, A_i, B_j)``."""
    if a.n != b.n:
        raise ValueError(f"models have different sample counts ({a.n} vs {b.n})")
    fn = _PAIR[metric]
    return fn(a, b).double()


def _chunks(total: int, per_item: int, budget: int = _GATHER_BUDGET):
    step = max(1, budget // max(1, per_item))
    for s in range(0, total, step):
        yield slice(s, min(total, s + step))


def knn_overlaps(a: ModelState, b: ModelState) -> torch.Tensor:
    """``[La, Lb, N]`` int32: ``|knn_A(i) ∩ knn_B(i)|`` for every layer pair and row, from the
    neighbour lists alone (``N·k²`` comparisons per layer pair; no ``N×N`` masks)."""
    n, k = a.n, a.topk
    out = []
    for sl in _chunks(a.num_layers, b.num_layers * n * k * k):
        eq = a.knn[sl][:, None, :, :, None] == b.knn[None, :, :, None, :]  # [ca, Lb, N, k, k]
        out.append(eq.any(dim=-1).sum(dim=-1, dtype=torch.int32))
    return torch.cat(out)


def _mutual_knn(a: ModelState, b: ModelState) -> torch.Tensor:
    return knn_overlaps(a, b).sum(dim=-1, dtype=torch.int64).double() / (a.n * a.topk)


def _cycle_knn(a: ModelState, b: ModelState) -> torch.Tensor:
    # reference: compute_knn_accuracy(knn_A[knn_B]): is i among the A-neighbours of its B-neighbours?
    # From the neighbour lists alone (N·k² per layer pair, no N×N masks).
    n, k = a.n, a.topk
    rows = torch.arange(n, device=a.knn.device).view(1, 1, n, 1)
    out = []
    for sl in _chunks(b.num_layers, a.num_layers * n * k * k):
        nb = a.knn[:, b.knn[sl]].view(a.num_layers, -1, n, k * k)  # [La, cb, N, k*k]: A-neighbours of B-neighbours
        out.append((nb == rows).any(dim=-1).sum(dim=-1, dtype=torch.int32).double() / n)
    return torch.cat(out, dim=1)


def _sequences(a: ModelState, b: ModelState, reduce) -> torch.Tensor:
    n, k = a.n, a.topk
    out = []
    for sl in _chunks(a.num_layers, b.num_layers * n * k * k):
        eq = a.knn[sl][:, None, :, :, None] == b.knn[None, :, :, None, :]  # [ca, Lb, N, k, k]
        out.append(reduce(eq.reshape(-1, k, k)).view(eq.shape[0], b.num_layers, n).double().mean(dim=-1))
    return torch.cat(out)


def lcs_lengths(eq: torch.Tensor) -> torch.Tensor:
    """LCS length of each pair of sequences from their equality table ``eq [B, m, n]``: the
    classic DP, one row at a time (dp[i][j] = max(dp[i-1][j], dp[i][j-1], dp[i-1][j-1] + eq))."""
    bsz, m, n = eq.shape
    prev = torch.zeros(bsz, n + 1, dtype=torch.int32, device=eq.device)
    for i in range(m):
        c = torch.maximum(prev[:, 1:], prev[:, :-1] + eq[:, i].int())
        new = torch.zeros_like(prev)
        new[:, 1:] = c.cummax(dim=1).values
        prev = new
    return prev[:, -1]


def edit_distances(eq: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance (unit insert/delete/substitute, as torchaudio's ``edit_distance``)
    of each pair of sequences from ``eq [B, m, n]``, one DP row at a time."""
    bsz, m, n = eq.shape
    ar = torch.arange(n + 1, dtype=torch.int32, device=eq.device)
    prev = ar.expand(bsz, n + 1)
    for i in range(1, m + 1):
        c = torch.minimum(prev[:, 1:] + 1, prev[:, :-1] + (~eq[:, i - 1]).int())
        c = torch.cat([torch.full((bsz, 1), i, dtype=torch.int32, device=eq.device), c], dim=1)
        prev = (c - ar).cummin(dim=1).values + ar
    return prev[:, -1]


def _lcs_knn(a: ModelState, b: ModelState) -> torch.Tensor:
    return _sequences(a, b, lcs_lengths)  # the reference's mean LCS length (not divided by k)


def _edit_distance_knn(a: ModelState, b: ModelState) -> torch.Tensor:
    return 1 - _sequences(a, b, edit_distances) / a.topk


def _cka(a: ModelState, b: ModelState) -> torch.Tensor:
    hsic = kernel_inner(a, b, "centered")
    return hsic / (torch.sqrt(a.self_sim["cka"][:, None] * b.self_sim["cka"][None, :]) + 1e-6)


def _unbiased_cka(a: ModelState, b: ModelState) -> torch.Tensor:
    n = a.n
    hsic = kernel_inner(a, b, "ucentered") / (n * (n - 3))
    return hsic / (torch.sqrt(a.self_sim["unbiased_cka"][:, None] * b.self_sim["unbiased_cka"][None, :]) + 1e-6)


def _cknna_hsic(knn_a, vals_a, mask_a, la_idx, mask_b, kern_b) -> torch.Tensor:
    """The reference's ``hsic_unbiased(mask∘K, mask∘L)`` with ``mask = mask_K ∘ mask_L`` for every
    (A layer, B layer): ``[ca, Lb]``. The mask's non-zeros lie at A's neighbour positions
    ``(i, knn_A(i))``, so each term of the estimator is a sum over those ``N·k`` positions.
    ``knn_a``/``vals_a`` ``[ca, N, k]`` are A's layers ``la_idx`` (indices into ``mask_a [N*N, La]``);
    ``mask_b``/``kern_b`` ``[N*N, Lb]`` are B's position-major masks and kernels."""
    ca, n, k = knn_a.shape
    lb = mask_b.shape[1]
    rows = torch.arange(n, device=knn_a.device).view(1, n, 1)
    pos = (rows * n + knn_a).reshape(ca, n * k)  # (i, j)
    pos_t = (knn_a * n + rows).reshape(ca, n * k)  # (j, i)
    g = mask_b.index_select(0, pos.reshape(-1)).view(ca, n, k, lb).double()  # mask_ij (A's part is 1 there)
    kb = kern_b.index_select(0, pos.reshape(-1)).view(ca, n, k, lb).double()  # L_ij
    ta = mask_a[pos_t, la_idx.view(ca, 1)].view(ca, n, k, 1).double()  # mask_K[j, i]
    tb = mask_b.index_select(0, pos_t.reshape(-1)).view(ca, n, k, lb).double()  # mask_L[j, i]
    ka = vals_a.view(ca, n, k, 1).double()  # K_ij
    p = g * ka  # (mask∘K)_ij at the candidate positions
    q = g * kb  # (mask∘L)_ij
    term1 = (p * kb * ta * tb).sum(dim=(1, 2))  # Σ P_ij Q_ji
    sum_p, sum_q = p.sum(dim=(1, 2)), q.sum(dim=(1, 2))
    row_q = q.sum(dim=2)  # [ca, N, Lb]
    col_p = torch.zeros(ca, n, lb, dtype=torch.float64, device=knn_a.device)
    col_p.scatter_add_(1, knn_a.reshape(ca, n * k, 1).expand(ca, n * k, lb), p.reshape(ca, n * k, lb))
    term3 = (col_p * row_q).sum(dim=1)  # Σ (P @ Q)
    return (term1 + sum_p * sum_q / ((n - 1) * (n - 2)) - 2 * term3 / (n - 2)) / (n * (n - 3))


def _cknna(a: ModelState, b: ModelState) -> torch.Tensor:
    n, k = a.n, a.topk
    parts = []
    layers = torch.arange(a.num_layers, device=a.cknna_knn.device)
    for sl in _chunks(a.num_layers, b.num_layers * n * k * 6):
        parts.append(_cknna_hsic(a.cknna_knn[sl], a.cknna_vals[sl], a.cknna_mask, layers[sl], b.cknna_mask,
                                 b.kernels["raw"]))
    sim = torch.cat(parts)
    return sim / (torch.sqrt(a.self_sim["cknna"][:, None] * b.self_sim["cknna"][None, :]) + 1e-6)


def _svcca(a: ModelState, b: ModelState) -> torch.Tensor:
    out = []
    for sl in _chunks(a.num_layers, b.num_layers * a.basis.shape[-1] ** 2, 1 << 20):
        m = torch.einsum("anc,bnd->abcd", a.basis[sl], b.basis)  # [ca, Lb, c, c]
        out.append(torch.linalg.svdvals(m).clamp(max=1.0).mean(dim=-1))
    return torch.cat(out)


def _jaccard_knn(a: ModelState, b: ModelState) -> torch.Tensor:
    """Mean over rows of ``|knn_A(i) ∩ knn_B(i)| / |knn_A(i) ∪ knn_B(i)|`` (ReSi's Jaccard k-NN
    similarity; neighbours as mutual_knn's, self excluded); ``|∪| = 2k - |∩|``."""
    hits = knn_overlaps(a, b).double()
    return (hits / (2 * a.topk - hits)).mean(dim=-1)


def _svd_products(a: ModelState, b: ModelState, reduce, per_pair: int = 0) -> torch.Tensor:
    """``reduce(U_Aᵀ U_B [c, Lb, R_a, R_b], a layer indices)`` for every layer pair, in chunks
    (``per_pair``: elements ``reduce`` adds per layer pair)."""
    ra, rb = a.svd_u.shape[-1], b.svd_u.shape[-1]
    layers = torch.arange(a.num_layers, device=a.svd_u.device)
    out = []
    for sl in _chunks(a.num_layers, b.num_layers * (ra * rb + per_pair), 1 << 22):
        m = torch.einsum("anr,bns->abrs", a.svd_u[sl], b.svd_u)
        out.append(reduce(m, layers[sl]))
    return torch.cat(out)


def _nuclear_cos(a: ModelState, b: ModelState) -> torch.Tensor:
    """``||X̃_Aᵀ X̃_B||_*`` of the centred layers scaled to unit Frobenius norm: the cosine of the
    Procrustes angle (= the nuclear norm of ``S_A U_Aᵀ U_B S_B``)."""
    def red(m, la):
        sa, sb = a.svd_s[la], b.svd_s
        prod = sa[:, None, :, None] * m * sb[None, :, None, :]
        nuc = torch.linalg.svdvals(prod).sum(dim=-1)
        return nuc / (sa.norm(dim=-1)[:, None] * sb.norm(dim=-1)[None, :])
    return _svd_products(a, b, red).clamp(max=1.0)


def _orthogonal_procrustes(a: ModelState, b: ModelState) -> torch.Tensor:
    """Williams et al. 2021 (eq. 3, size-and-shape with centring and unit norm; Ding et al. 2021's
    ``||X||² + ||Y||² - 2||XᵀY||_*`` before the root): ``min_{Q orthogonal} ||X̃_A - X̃_B Q||_F`` with
    X̃ the centred layer divided by its Frobenius norm, narrower layer zero-padded; = sqrt(2 - 2 cos θ)."""
    return torch.sqrt((2 - 2 * _nuclear_cos(a, b)).clamp(min=0))


def _angular_shape_metric(a: ModelState, b: ModelState) -> torch.Tensor:
    """Williams et al. 2021 (eq. 4, the angular shape metric with the orthogonal group, centred):
    ``θ = arccos(max_Q ⟨X̃_A, X̃_B Q⟩) = arccos ||X̃_Aᵀ X̃_B||_*`` in radians, ``[0, π/2]``."""
    return torch.arccos(_nuclear_cos(a, b))


def _linear_regression(a: ModelState, b: ModelState) -> torch.Tensor:
    """R² of the least-squares fit of the centred layer B from the centred layer A (Kornblith et al.
    2019, sec. 3; ReSi's linear regression fit): ``||P_A X_B||_F² / ||X_B||_F²`` with ``P_A`` the
    projection onto A's column space ``U_A U_Aᵀ``. Not symmetric: A predicts B."""
    def red(m, la):
        sb = b.svd_s
        return ((m * sb[None, :, None, :]) ** 2).sum(dim=(-2, -1)) / (sb ** 2).sum(dim=-1)[None, :]
    return _svd_products(a, b, red)


def _eigenspace_overlap(a: ModelState, b: ModelState) -> torch.Tensor:
    """May et al. 2019 (def. 1): ``||U_Aᵀ U_B||_F² / max(d_A, d_B)`` with ``U`` orthonormal bases of
    the (centred) layers' column spaces and ``d`` their ranks."""
    def red(m, la):
        ranks = torch.maximum(a.rank[la][:, None], b.rank[None, :]).double()
        return (m ** 2).sum(dim=(-2, -1)) / ranks
    return _svd_products(a, b, red)


def _rsa(a: ModelState, b: ModelState) -> torch.Tensor:
    """Pearson correlation of the upper triangles of the two Euclidean RDMs (Kriegeskorte et al. 2008;
    rsatoolbox ``calc_rdm(method='euclidean')`` compared with ``compare(method='corr')``)."""
    return a.kernels["rdm"] @ b.kernels["rdm"].T


def _distance_correlation(a: ModelState, b: ModelState) -> torch.Tensor:
    """Székely, Rizzo & Bakirov 2007 (def. 4, V-statistics): double-centred distance matrices
    ``A, B``, ``dCov² = mean(A ∘ B)``, ``dCor = sqrt(dCov²(A,B) / sqrt(dVar²(A) dVar²(B)))``."""
    n = a.n
    dcov = (a.kernels["dcentered"] @ b.kernels["dcentered"].T) / (n * n)
    den = torch.sqrt(a.self_sim["distance_correlation"][:, None] * b.self_sim["distance_correlation"][None, :])
    return torch.where(den > 0, dcov / den.clamp(min=1e-300), torch.zeros_like(dcov)).clamp(min=0).sqrt()


def _stat_difference(name: str):
    def fn(a: ModelState, b: ModelState) -> torch.Tensor:
        return (a.stats[name][:, None] - b.stats[name][None, :]).abs()
    fn.__doc__ = f"``|{name}(A) - {name}(B)|`` per layer pair (ReSi's {name} difference)."
    return fn


_PAIR = {"mutual_knn": _mutual_knn, "cycle_knn": _cycle_knn, "lcs_knn": _lcs_knn, "cka": _cka,
         "unbiased_cka": _unbiased_cka, "cknna": _cknna, "svcca": _svcca, "edit_distance_knn": _edit_distance_knn,
         "jaccard_knn": _jaccard_knn, "orthogonal_procrustes": _orthogonal_procrustes,
         "angular_shape_metric": _angular_shape_metric, "linear_regression": _linear_regression,
         "eigenspace_overlap": _eigenspace_overlap, "rsa": _rsa, "distance_correlation": _distance_correlation,
         # concentricity: mean cosine of the rows to their mean (ReSi, after Wang et al. 2022);
         # uniformity: log mean over pairs of exp(-2 ||x_i - x_j||²) (Wang & Isola 2020, t = 2);
         # magnitude: the length of the mean row (ReSi's magnitude_difference)
         "concentricity_difference": _stat_difference("concentricity"),
         "magnitude_difference": _stat_difference("magnitude"),
         "uniformity_difference": _stat_difference("uniformity"), **_extra.PAIR}
assert set(_PAIR) == set(METRICS), "metrics.yaml and the pair functions disagree"


def best_of(metric: str, scores_ab: torch.Tensor, zero_floor: bool = True) -> tuple[float, tuple[int, int]]:
    """:func:`best_layer_pair` for a similarity; for a distance the minimum, never floored."""
    if is_distance(metric):
        score, ij = best_layer_pair(-scores_ab, zero_floor=False)
        return -score, ij
    return best_layer_pair(scores_ab, zero_floor)


def best_layer_pair(scores_ab: torch.Tensor, zero_floor: bool = True) -> tuple[float, tuple[int, int]]:
    """Best score of an ``[La, Lb]`` matrix and its ``(i, j)``, ties and NaNs as the reference's
    loop (outer over A's layers, first strictly greater score wins, NaN never wins). With
    ``zero_floor`` (the reference: its best starts at 0) a pair wins only above 0: where none does
    the result is (0.0, (-1, -1)) (the reference's score 0, indices None). Without it the maximum is
    kept even when negative; where every score is NaN the result is (nan, (-1, -1))."""
    flat = scores_ab.reshape(-1)
    clean = torch.where(torch.isnan(flat), torch.full_like(flat, float("-inf")), flat)
    idx = int(torch.argmax(clean))  # first maximal value
    if zero_floor and not clean[idx] > 0:
        return 0.0, (-1, -1)
    if torch.isinf(clean[idx]) and clean[idx] < 0:
        return float("nan"), (-1, -1)
    return float(flat[idx]), divmod(idx, scores_ab.shape[1])
