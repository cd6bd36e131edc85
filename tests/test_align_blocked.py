"""k-NN metrics in row blocks (memory O(N·k + block·N)) give exactly the dense path's neighbours and
scores, ties between duplicate rows included, at a few thousand rows."""

from __future__ import annotations

import torch

from featx.align import metrics as M

N = 3000


def _feats(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, 64, generator=g)
    x[N // 2:N // 2 + 200] = x[:200]  # 200 duplicated rows: exact ties, broken by index order
    x[-300:] = (x[-300:] * 2).round() / 2  # coarse values: more equal similarities
    return x


def test_blocks_give_the_dense_neighbours_with_ties():
    prepared = M.prepare_features(_feats(0))
    for x in prepared:
        hat = x @ x.T
        hat.fill_diagonal_(float("-inf"))
        dense = M.nearest_neighbors(hat, 10)
        idx, vals = M.knn_blocked(x, 10, budget=N * 128)  # 24 blocks of 128 rows
        assert torch.equal(idx, dense)
        assert torch.equal(vals, hat.gather(-1, dense))
    assert (prepared[0][:200] == prepared[0][N // 2:N // 2 + 200]).all()  # the ties are there


def test_blocked_scores_equal_the_dense_path(monkeypatch):
    pa, pb = M.prepare_features(_feats(0)), M.prepare_features(_feats(1))
    # with cka in the same state the neighbours come from the dense N×N Gram matrices
    dense = [M.build_state(p, ["mutual_knn", "cka"], 10) for p in (pa, pb)]
    monkeypatch.setattr(M, "_BLOCK_BUDGET", N * 100)  # 30 blocks
    blocked = [M.build_state(p, ["mutual_knn"], 10) for p in (pa, pb)]
    assert blocked[0].kernels == {}  # nothing N×N kept
    assert torch.equal(blocked[0].knn, dense[0].knn)
    for metric in ("mutual_knn", "jaccard_knn"):
        assert torch.equal(M.layer_scores(metric, *blocked), M.layer_scores(metric, *dense)), metric
