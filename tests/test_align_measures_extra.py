"""featx/align/measures_extra.py's measures (PWCCA, GULP, rank similarity, second-order cosine), each
against a direct computation of its paper's formula: covariance matrices and their inverse square
roots / ridge inverses in NumPy (not the SVD route featx takes), and per-row loops over neighbour sets.
Layers of different widths; GULP also on one wider than N."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.spatial.distance import cosine

from featx.align import measures_extra as X
from featx.align import metrics as M
from tests.test_align_measures import _each, _layers, _scores


@pytest.fixture(scope="module")
def pair():
    a = M.prepare_features(_layers(0, [8, 20]))
    b = M.prepare_features(_layers(1, [12, 40]))  # 40 > N = 30: centred rank N - 1
    return a, b


@pytest.fixture(scope="module")
def tall():
    """More rows than both widths together, so every covariance is invertible (CCA is defined)."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(90, 5, generator=g)
    side = lambda widths: M.prepare_features([torch.cat([base, torch.randn(90, w - 5, generator=g)], 1)  # noqa: E731
                                              * torch.rand(w, generator=g) for w in widths])
    return side([8, 20]), side([12, 30])


def _centred(x):
    return x - x.mean(axis=0)


def _inv_sqrt(c):
    return np.linalg.inv(np.real(sqrtm(c)))


def test_pwcca_vs_covariance_cca(tall):
    a, b = tall

    def pwcca(x, y):  # Morcos et al. 2018: CCA by whitening, weights from x's neurons
        x, y = _centred(x), _centred(y)
        wx, wy = _inv_sqrt(x.T @ x), _inv_sqrt(y.T @ y)
        u, rho, _ = np.linalg.svd(wx @ (x.T @ y) @ wy)
        n = min(x.shape[1], y.shape[1])
        h = x @ wx @ u[:, :n]  # canonical variates of x, unit norm
        alpha = np.abs(h.T @ x).sum(axis=1)
        return float((alpha * rho[:n]).sum() / alpha.sum())

    got = _scores("pwcca", a, b)
    np.testing.assert_allclose(got, _each(a, b, pwcca), atol=1e-6)
    assert not np.allclose(got, _scores("pwcca", b, a).T, atol=1e-3)  # the first argument's neurons weigh


def test_gulp_vs_ridge_covariances(pair):
    a, b = pair
    lam = X.GULP_LAMBDA

    def gulp(x, y):  # Boix-Adsera et al. 2022, eq. 3, centred, tr(Σ) = 1
        n = x.shape[0]
        x, y = (_centred(z) / np.sqrt(np.sum(_centred(z) ** 2) / n) for z in (x, y))
        sx, sy, sxy = x.T @ x / n, y.T @ y / n, x.T @ y / n
        ix, iy = np.linalg.inv(sx + lam * np.eye(len(sx))), np.linalg.inv(sy + lam * np.eye(len(sy)))
        d2 = np.trace(ix @ sx @ ix @ sx) + np.trace(iy @ sy @ iy @ sy) - 2 * np.trace(ix @ sxy @ iy @ sxy.T)
        return float(np.sqrt(max(d2, 0)))

    np.testing.assert_allclose(_scores("gulp", a, b), _each(a, b, gulp), atol=1e-5)
    np.testing.assert_allclose(np.diag(_scores("gulp", a, a)), 0, atol=1e-3)  # sqrt of float rounding


def _knn_lists(x, k):
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in sim]


@pytest.mark.parametrize("k", [1, 5])
def test_rank_similarity_vs_loop(pair, k):
    a, b = pair

    def rank_sim(x, y):  # Wang et al. 2020 as ReSi: ranks 1-based, normalised by the harmonic number
        scores = []
        for lx, ly in zip(_knn_lists(x, k), _knn_lists(y, k)):
            both = set(lx) & set(ly)
            vmax = sum(1 / t for t in range(1, len(both) + 1))
            s = sum(2 / ((1 + abs(lx.index(j) - ly.index(j))) * (lx.index(j) + ly.index(j) + 2)) for j in both)
            scores.append(s / vmax if both else 0.0)
        return float(np.mean(scores))

    np.testing.assert_allclose(_scores("rank_similarity_knn", a, b, k), _each(a, b, rank_sim), atol=1e-12)
    np.testing.assert_allclose(np.diag(_scores("rank_similarity_knn", a, a, k)), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 5])
def test_second_order_cosine_vs_loop(pair, k):
    a, b = pair

    def second_order(x, y):  # Hamilton et al. 2016: cosine of the similarity vectors over the union
        out = []
        for i, (lx, ly) in enumerate(zip(_knn_lists(x, k), _knn_lists(y, k))):
            union = sorted(set(lx) | set(ly))
            out.append(1 - cosine([x[i] @ x[j] for j in union], [y[i] @ y[j] for j in union]))
        return float(np.mean(out))

    got = _scores("second_order_cosine_knn", a, b, k)
    np.testing.assert_allclose(got, _each(a, b, second_order), atol=1e-6)
    np.testing.assert_allclose(got, _scores("second_order_cosine_knn", b, a, k).T, atol=1e-12)


def test_help_lists_at_least_twenty_measures():
    out = subprocess.run([sys.executable, "-m", "featx.cli.main", "align", "--help"], capture_output=True,
                         text=True, check=True).stdout
    listed = [m for m in M.METRICS if f"  {m} " in out]
    assert len(listed) >= 20 and set(X.PAIR) <= set(listed)
