"""Straightforward re-implementations of the reference's alignment (platonic-rep ``metrics.py`` and
``measure_alignment.compute_score``): one layer pair at a time, the metric's textbook definition,
float64 unless the definition is about ranks, and ``compute_alignment``, the reference's loop over
model pairs. Used by tests/test_align.py as the thing featx's batched version must agree with, and
by ``python -m bench.align`` as the baseline it is timed against. The reference moves features to
``cuda:0``; here everything runs where the tensors are given (the benchmark: on the CPU)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def remove_outliers(feats: torch.Tensor, q: float = 0.95) -> torch.Tensor:
    q_val = feats.view(-1).abs().sort().values[int(q * feats.numel())]
    return feats.clamp(-q_val, q_val)


def nearest_neighbors(feats: torch.Tensor, topk: int) -> torch.Tensor:
    return (feats @ feats.T).fill_diagonal_(-1e8).argsort(dim=1, descending=True)[:, :topk]


def mutual_knn(a, b, topk):
    ka, kb = nearest_neighbors(a, topk), nearest_neighbors(b, topk)
    n = ka.shape[0]
    r = torch.arange(n).unsqueeze(1)
    ma, mb = torch.zeros(n, n), torch.zeros(n, n)
    ma[r, ka] = 1.0
    mb[r, kb] = 1.0
    return ((ma * mb).sum(dim=1) / topk).mean().item()


def cycle_knn(a, b, topk):
    ka, kb = nearest_neighbors(a, topk), nearest_neighbors(b, topk)
    knn = ka[kb]  # [N, k, k]
    n = knn.shape[0]
    acc = (knn == torch.arange(n).view(-1, 1, 1)).float().view(n, -1).max(dim=1).values.mean()
    return acc.item()


def _lcs(x, y):
    m, n = len(x), len(y)
    dp = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            dp[i][j] = dp[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(dp[i - 1][j], dp[i][j - 1])
    return dp[m][n]


def _levenshtein(x, y):
    prev = list(range(len(y) + 1))
    for i in range(len(x)):
        cur = [i + 1] + [0] * len(y)
        for j in range(len(y)):
            cur[j + 1] = prev[j] if x[i] == y[j] else min(prev[j] + 1, cur[j] + 1, prev[j + 1] + 1)
        prev = cur
    return prev[-1]


def lcs_knn(a, b, topk):
    ka, kb = nearest_neighbors(a, topk).tolist(), nearest_neighbors(b, topk).tolist()
    return float(np.mean([_lcs(x, y) for x, y in zip(ka, kb)]))


def edit_distance_knn(a, b, topk):
    ka, kb = nearest_neighbors(a, topk).tolist(), nearest_neighbors(b, topk).tolist()
    return 1 - float(np.mean([_levenshtein(x, y) for x, y in zip(ka, kb)])) / topk


def hsic_unbiased(K, L):
    m = K.shape[0]
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    v = (Kt * Lt.T).sum() + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * (Kt @ Lt).sum() / (m - 2)
    return v / (m * (m - 3))


def hsic_biased(K, L):
    H = torch.eye(K.shape[0], dtype=K.dtype) - 1 / K.shape[0]
    return torch.trace(K @ H @ L @ H)


def cka(a, b, unbiased=False):
    a, b = a.double(), b.double()
    K, L = a @ a.T, b @ b.T
    fn = hsic_unbiased if unbiased else hsic_biased
    return (fn(K, L) / (torch.sqrt(fn(K, K) * fn(L, L)) + 1e-6)).item()


def unbiased_cka(a, b):
    return cka(a, b, unbiased=True)


def cknna(a, b, topk):
    a, b = a.double(), b.double()
    n = a.shape[0]
    K, L = a @ a.T, b @ b.T

    def similarity(K, L):
        _, ik = torch.topk(K.clone().fill_diagonal_(float("-inf")), topk, dim=1)
        _, il = torch.topk(L.clone().fill_diagonal_(float("-inf")), topk, dim=1)
        mk = torch.zeros(n, n, dtype=K.dtype).scatter_(1, ik, 1)
        ml = torch.zeros(n, n, dtype=K.dtype).scatter_(1, il, 1)
        mask = mk * ml
        return hsic_unbiased(mask * K, mask * L)

    return similarity(K, L).item() / (torch.sqrt(similarity(K, K) * similarity(L, L)) + 1e-6).item()


def svcca(a, b, cca_dim=10):
    """SVCCA as the reference defines it, with the exact top-``cca_dim`` SVD (the reference's
    ``svd_lowrank`` is a randomised approximation of it) and classical CCA (what sklearn's
    iterative CCA converges to): canonical variates from whitened bases, mean correlation."""

    def pre(x):
        x = x.double()
        x = x - x.mean(dim=0)
        return x / (x.std(dim=0) + 1e-8)

    u1 = torch.linalg.svd(pre(a), full_matrices=False)[0][:, :cca_dim].numpy()
    u2 = torch.linalg.svd(pre(b), full_matrices=False)[0][:, :cca_dim].numpy()

    def whiten(u):
        u = u - u.mean(axis=0)
        c = u.T @ u
        w, v = np.linalg.eigh(c)
        return u @ v @ np.diag(w ** -0.5) @ v.T

    w1, w2 = whiten(u1), whiten(u2)
    p, _, qt = np.linalg.svd(w1.T @ w2)
    c1, c2 = w1 @ p, w2 @ qt.T  # canonical variates
    return float(np.mean([np.corrcoef(c1[:, i], c2[:, i])[0, 1] for i in range(cca_dim)]))


METRIC_FNS = {"mutual_knn": mutual_knn, "cycle_knn": cycle_knn, "lcs_knn": lcs_knn, "cka": cka,
              "unbiased_cka": unbiased_cka, "cknna": cknna, "svcca": svcca, "edit_distance_knn": edit_distance_knn}


def measure(metric, a, b, topk=10):
    fn = METRIC_FNS[metric]
    return fn(a, b, topk) if "knn" in metric else fn(a, b)


def prepare(feats):
    """measure_alignment.prepare_features(exact=True): float, clamp over the whole [N, L, D]."""
    return remove_outliers(feats.float())


def layer_matrix(metric, feats_a, feats_b, topk=10):
    """[La, Lb] of measure(metric, normalize(A_i), normalize(B_j)) for prepared [N, L, D] inputs."""
    la, lb = feats_a.shape[1], feats_b.shape[1]
    out = np.zeros((la, lb))
    for i in range(la):
        for j in range(lb):
            x = F.normalize(feats_a[:, i, :], p=2, dim=-1)
            y = F.normalize(feats_b[:, j, :], p=2, dim=-1)
            out[i, j] = measure(metric, x, y, topk)
    return out


def compute_score(x_feats, y_feats, metric="mutual_knn", topk=10):
    """The reference's compute_score loop: best score over all layer pairs, first strictly greater."""
    best, best_idx = 0, None
    for i in range(x_feats.shape[1]):
        for j in range(y_feats.shape[1]):
            x = F.normalize(x_feats[:, i, :], p=2, dim=-1)
            y = F.normalize(y_feats[:, j, :], p=2, dim=-1)
            score = measure(metric, x, y, topk)
            if score > best:
                best, best_idx = score, (i, j)
    return best, best_idx


def compute_alignment(feats: list[torch.Tensor], metric: str = "mutual_knn", topk: int = 10
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``measure_alignment.compute_alignment`` in its symmetric mode (x list = y list, as
    ``featx align`` without a second side): for each model x, prepared once, every model y at or
    after it prepared again and scored by ``compute_score(y, x)`` over all layer pairs; the lower
    triangle copied (``cycle_knn`` is not symmetric: every pair). Features in memory instead of
    ``torch.load`` per file. Returns ``scores [M, M]`` and ``indices [M, M, 2]`` (y layer, x layer)."""
    m = len(feats)
    symmetric = metric != "cycle_knn"
    scores, indices = np.zeros((m, m)), np.zeros((m, m, 2))
    for i in range(m):
        x = prepare(feats[i])
        for j in range(m):
            if symmetric and i > j:
                scores[i, j], indices[i, j] = scores[j, i], indices[j, i]
                continue
            scores[i, j], indices[i, j] = compute_score(prepare(feats[j]), x, metric, topk)
    return scores, indices
