"""Alignment in bounded memory: cka/unbiased_cka through D×D feature products (no N×N kernel) and
the k-NN measures from neighbour lists alone give the dense path's scores, checked against the dense
kernels and against the reference's own formulas (bench/align/reference.py), ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.align import reference as R
from featx.align import metrics as M
from tests.test_align import TOL

N = 1200


def _feats(seed: int, n: int = N, layers: int = 3, width: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 8, generator=g)
    x = torch.randn(n, layers, width, generator=g) + (shared @ torch.randn(8, width, generator=g))[:, None]
    dup = min(50, n // 4)
    x[n // 2:n // 2 + dup] = x[:dup]  # duplicated rows: ties in every k-NN graph
    return x


def _states(prepared, metrics, linear: bool, monkeypatch) -> M.ModelState:
    monkeypatch.setattr(M, "_KERNEL_STATE_BUDGET", 1 if linear else 1 << 40)
    return M.build_state(prepared, metrics, 10)


@pytest.mark.parametrize("metric", ["cka", "unbiased_cka"])
def test_feature_products_give_the_kernels_scores(metric, monkeypatch):
    pa, pb = M.prepare_features(_feats(0)), M.prepare_features(_feats(1, width=40))
    dense = [_states(p, [metric], False, monkeypatch) for p in (pa, pb)]
    linear = [_states(p, [metric], True, monkeypatch) for p in (pa, pb)]
    assert linear[0].kernels == {} and dense[0].linear == {}  # the route taken: no N×N kernel
    want = M.layer_scores(metric, *dense)
    torch.testing.assert_close(M.layer_scores(metric, *linear), want, rtol=0, atol=1e-6)
    # one model under the budget, the other past it: mixed products, both orientations
    torch.testing.assert_close(M.layer_scores(metric, dense[0], linear[1]), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(M.layer_scores(metric, linear[0], dense[1]), want, rtol=0, atol=1e-6)
    for i in range(len(pa)):  # and the reference's own trace formula, layer pair by layer pair
        for j in range(len(pb)):
            ref = R.measure(metric, pa[i], pb[j])
            assert float(M.layer_scores(metric, *linear)[i, j]) == pytest.approx(ref, abs=TOL[metric])


def test_feature_products_take_lists_of_any_widths(monkeypatch):
    layers_a = [torch.randn(300, w, generator=torch.Generator().manual_seed(w)) for w in (16, 64)]
    layers_b = [torch.randn(300, w, generator=torch.Generator().manual_seed(w + 1)) for w in (32, 8, 24)]
    pa, pb = M.prepare_features(layers_a), M.prepare_features(layers_b)
    for metric in ("cka", "unbiased_cka"):
        linear = [_states(p, [metric], True, monkeypatch) for p in (pa, pb)]
        dense = [_states(p, [metric], False, monkeypatch) for p in (pa, pb)]
        torch.testing.assert_close(M.layer_scores(metric, *linear), M.layer_scores(metric, *dense), rtol=0, atol=1e-6)


def test_kernel_route_is_decided_by_the_kernels_bytes():
    assert M.kernel_route(4, 8192, budget=2**30)  # 4 x 8192² x 4 bytes = 1 GiB
    assert not M.kernel_route(4, 8193, budget=2**30)


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "jaccard_knn", "lcs_knn", "edit_distance_knn"])
def test_knn_measures_from_row_blocks_equal_the_dense_path(metric, monkeypatch):
    pa, pb = M.prepare_features(_feats(2)), M.prepare_features(_feats(3))
    dense = [M.build_state(p, [metric, "cka"], 10) for p in (pa, pb)]  # neighbours from the N×N Gram
    monkeypatch.setattr(M, "_BLOCK_BUDGET", N * 97)  # 13 blocks of 97 rows
    blocked = [M.build_state(p, [metric], 10) for p in (pa, pb)]
    assert blocked[0].kernels == {} and blocked[0].nbytes() == blocked[0].knn.nbytes + blocked[0].knn_vals.nbytes
    got = M.layer_scores(metric, *blocked)
    assert torch.equal(got, M.layer_scores(metric, *dense))
    # the reference's formulas on its neighbours, ties in index order (featx's documented rule; the
    # reference's unstable CPU argsort leaves them so on small inputs only)
    monkeypatch.setattr(R, "nearest_neighbors", lambda x, k: (x @ x.T).fill_diagonal_(-1e8).argsort(
        dim=1, descending=True, stable=True)[:, :k])
    ref = np.array([[_reference(metric, pa[i], pb[j]) for j in range(len(pb))] for i in range(len(pa))])
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=TOL.get(metric, 1e-9))


def _reference(metric: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """The reference's measure; Jaccard (not one of its) over the reference's neighbour sets."""
    if metric in R.METRIC_FNS:
        return R.measure(metric, a, b)
    ka, kb = R.nearest_neighbors(a, 10).tolist(), R.nearest_neighbors(b, 10).tolist()
    return float(np.mean([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(ka, kb)]))


@pytest.mark.parametrize("n, width", [(1200, 48), (40, 64)])  # D < N: D×D covariance; D > N: the N×N Gram
def test_svcca_from_covariances_equals_the_svd_subspaces(n, width):
    pa, pb = M.prepare_features(_feats(4, n, width=width)), M.prepare_features(_feats(5, n, width=width - 8))
    sa, sb = (M.build_state(p, ["svcca"]) for p in (pa, pb))

    def basis(x: torch.Tensor) -> np.ndarray:  # the reference's standardisation, NumPy's SVD
        act = x.double().numpy()
        act = act - act.mean(axis=0)
        act = act / (act.std(axis=0, ddof=1) + 1e-8)
        return np.linalg.svd(act, full_matrices=False)[0][:, :M.DEFAULT_CCA_DIM]

    want = np.array([[np.linalg.svd(basis(a).T @ basis(b), compute_uv=False).clip(max=1).mean() for b in pb]
                     for a in pa])
    np.testing.assert_allclose(M.layer_scores("svcca", sa, sb).numpy(), want, rtol=0, atol=1e-9)
