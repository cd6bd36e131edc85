"""The measures added through the registry (featx/align/metrics.yaml), each against an independent
computation: SciPy where it has the operation (orthogonal Procrustes, pdist, Pearson, orth), else a
plain loop over the paper's formula. Layers of different widths, one wider than N (rank < width)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import orth, orthogonal_procrustes
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr

from featx.align import metrics as M

N = 30


def _layers(seed: int, widths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, 6, generator=g)  # shared structure so scores are not all near chance
    return [torch.cat([base, torch.randn(N, w - 6, generator=g)], dim=1) * torch.rand(w, generator=g) for w in widths]


@pytest.fixture(scope="module")
def pair():
    a = M.prepare_features(_layers(0, [8, 20]))
    b = M.prepare_features(_layers(1, [12, 40]))  # 40 > N: centred rank N - 1
    return a, b


def _scores(metric, a, b, topk=5):
    return M.layer_scores(metric, M.build_state(a, [metric], topk), M.build_state(b, [metric], topk)).numpy()


def _np(x):
    return x.double().numpy()


def _shape(x):
    """Centred, unit Frobenius norm (Williams et al. 2021's preprocessing)."""
    x = x - x.mean(axis=0)
    return x / np.linalg.norm(x)


def _padded(x, y):
    w = max(x.shape[1], y.shape[1])
    return [np.pad(z, ((0, 0), (0, w - z.shape[1]))) for z in (x, y)]


def _each(a, b, fn):
    return np.array([[fn(_np(x), _np(y)) for y in b] for x in a])


def test_orthogonal_procrustes_and_angular_vs_scipy(pair):
    a, b = pair

    def procrustes(x, y):
        x, y = _padded(_shape(x), _shape(y))
        q, _ = orthogonal_procrustes(y, x)  # argmin ||y q - x||
        return np.linalg.norm(x - y @ q)

    def angular(x, y):
        x, y = _padded(_shape(x), _shape(y))
        q, _ = orthogonal_procrustes(y, x)
        return math.acos(min(1.0, float(np.sum(x * (y @ q)))))

    np.testing.assert_allclose(_scores("orthogonal_procrustes", a, b), _each(a, b, procrustes), atol=1e-6)
    np.testing.assert_allclose(_scores("angular_shape_metric", a, b), _each(a, b, angular), atol=1e-5)


def test_linear_regression_vs_lstsq(pair):
    a, b = pair

    def r2(x, y):
        x, y = x - x.mean(axis=0), y - y.mean(axis=0)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        return 1 - np.sum((y - x @ coef) ** 2) / np.sum(y ** 2)

    got = _scores("linear_regression", a, b)
    np.testing.assert_allclose(got, _each(a, b, r2), atol=1e-6)
    assert not np.allclose(got, _scores("linear_regression", b, a).T)  # A predicts B: not symmetric


def test_eigenspace_overlap_vs_scipy_orth(pair):
    a, b = pair

    def eos(x, y):
        ux, uy = orth(x - x.mean(axis=0), rcond=1e-6), orth(y - y.mean(axis=0), rcond=1e-6)
        return np.sum((ux.T @ uy) ** 2) / max(ux.shape[1], uy.shape[1])

    np.testing.assert_allclose(_scores("eigenspace_overlap", a, b), _each(a, b, eos), atol=1e-6)


def test_rsa_vs_scipy(pair):
    a, b = pair
    ref = _each(a, b, lambda x, y: pearsonr(pdist(x, "euclidean"), pdist(y, "euclidean")).statistic)
    np.testing.assert_allclose(_scores("rsa", a, b), ref, atol=1e-5)


def test_distance_correlation_vs_formula(pair):
    a, b = pair

    def dcor(x, y):  # Székely et al. 2007, def. 4, written out element by element
        def centred(z):
            d = [[math.dist(z[i], z[j]) for j in range(N)] for i in range(N)]
            rm = [sum(r) / N for r in d]
            tot = sum(rm) / N
            return [[d[i][j] - rm[i] - rm[j] + tot for j in range(N)] for i in range(N)]
        ax, ay = centred(x), centred(y)
        v = lambda p, q: sum(p[i][j] * q[i][j] for i in range(N) for j in range(N)) / N ** 2  # noqa: E731
        return math.sqrt(v(ax, ay) / math.sqrt(v(ax, ax) * v(ay, ay)))

    np.testing.assert_allclose(_scores("distance_correlation", a, b), _each(a, b, dcor), atol=1e-5)


def test_jaccard_knn_vs_sets(pair):
    a, b = pair
    k = 5

    def knn_sets(x):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return [set(np.argsort(-row, kind="stable")[:k]) for row in sim]

    def jac(x, y):
        sx, sy = knn_sets(x), knn_sets(y)
        return np.mean([len(p & q) / len(p | q) for p, q in zip(sx, sy)])

    np.testing.assert_allclose(_scores("jaccard_knn", a, b, k), _each(a, b, jac), atol=1e-12)


def test_concentricity_uniformity_and_magnitude_differences(pair):
    a, b = pair

    def conc(x):
        m = x.mean(axis=0)
        return np.mean([r @ m / (np.linalg.norm(r) * np.linalg.norm(m)) for r in x])

    def unif(x):  # Wang & Isola 2020: log E exp(-t ||x - y||²), t = 2, over pairs i < j
        return math.log(np.mean(np.exp(-2 * pdist(x, "sqeuclidean"))))

    def magnitude(x):  # ReSi's magnitude_difference: the Euclidean length of the mean row
        return np.linalg.norm(x.mean(axis=0))

    for metric, stat in (("concentricity_difference", conc), ("uniformity_difference", unif),
                         ("magnitude_difference", magnitude)):
        np.testing.assert_allclose(_scores(metric, a, b), _each(a, b, lambda x, y: abs(stat(x) - stat(y))),
                                   atol=1e-6, err_msg=metric)


def test_distance_best_is_the_minimum():
    scores = torch.tensor([[0.5, 0.2], [0.9, 0.3]], dtype=torch.float64)
    assert M.best_of("orthogonal_procrustes", scores) == (0.2, (0, 1))
    assert M.best_of("cka", scores) == (0.9, (1, 0))


def test_help_lists_every_registered_measure():
    out = subprocess.run([sys.executable, "-m", "featx.cli.main", "align", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert len(M.METRICS) >= 17
    for name, info in M.REGISTRY.items():
        assert name in out and info.kind in ("similarity", "distance")
