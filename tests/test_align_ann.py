"""Approximate neighbours (opt-in ``--knn_index hnsw``, faiss): never the default, valid neighbour
lists (self excluded, k distinct rows), recall@k measured against exact neighbours and reported in
the log and the results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featx.align import ann
from featx.align import metrics as M
from featx.align.results import load_results
from featx.cli.main import main

pytest.importorskip("faiss")


def _layers(seed: int, n: int = 2000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 32, generator=g) + torch.randn(n, 1, 32, generator=g)


def test_hnsw_neighbours_and_their_recall():
    x = M.prepare_features(_layers(0))[0]
    idx, vals, recall = ann.hnsw_knn(x, 10)
    n = x.shape[0]
    assert idx.shape == (n, 10) and not (idx == torch.arange(n)[:, None]).any()  # self excluded
    assert all(len(set(r)) == 10 for r in idx.tolist())
    torch.testing.assert_close(vals, (x[:, None, :] * x[idx]).sum(-1), rtol=0, atol=1e-5)  # similarities of those
    exact, _ = M.knn_blocked(x, 10)
    true_recall = float((idx[:, :, None] == exact[:, None, :]).any(-1).float().mean())
    assert recall == pytest.approx(true_recall, abs=0.03)  # the sample's estimate of the whole recall
    assert true_recall > 0.9


def test_align_reports_the_recall(tmp_path, capsys):
    paths = []
    for i in range(2):
        torch.save({"feats": _layers(i)}, tmp_path / f"m{i}.pt")
        paths.append(str(tmp_path / f"m{i}.pt"))
    out = tmp_path / "al"
    assert main(["align", "--x", paths[0], "--y", paths[1], "--metric", "mutual_knn", "--out", str(out),
                 "--device", "cpu", "--knn_index", "hnsw"]) == 0
    assert "hnsw neighbours, recall@10 vs exact" in capsys.readouterr().err
    got = load_results(next(out.rglob("mutual_knn_k10.npz")))
    assert got["knn_index"] == "hnsw" and 0.9 < got["knn_recall_x"][0] <= 1
    assert main(["align", "--x", paths[0], "--y", paths[1], "--metric", "mutual_knn", "--out", str(tmp_path / "ex"),
                 "--device", "cpu"]) == 0
    exact = load_results(next((tmp_path / "ex").rglob("mutual_knn_k10.npz")))
    assert exact["knn_index"] == "exact" and exact["knn_recall_x"] == [None]  # the default: exact
    assert abs(float(np.asarray(got["scores"])[0, 0]) - float(np.asarray(exact["scores"])[0, 0])) < 0.05


def test_calibration_refuses_approximate_neighbours(tmp_path, capsys):
    torch.save({"feats": _layers(0, 50)}, tmp_path / "m.pt")
    rc = main(["align", "--x", str(tmp_path / "m.pt"), "--y", str(tmp_path / "m.pt"), "--calibrate", "5",
               "--knn_index", "hnsw", "--out", str(tmp_path / "al")])
    assert rc != 0 and "drop --knn_index hnsw" in capsys.readouterr().err


def test_the_scoring_api_takes_approximate_neighbours(tmp_path):
    from featx import Alignment
    from featx.errors import UsageError
    from featx.store.local import LocalStore
    from tests.test_align import commit

    stored, mine = _layers(3, 1500), _layers(4, 1500)
    commit(LocalStore(tmp_path), "featx-smoke/vit", stored)
    exact = Alignment(["featx-smoke/vit"], str(tmp_path), dataset="featx-sample", device="cpu").score(mine)
    approx = Alignment(["featx-smoke/vit"], str(tmp_path), dataset="featx-sample", device="cpu", knn_index="hnsw")
    got = approx.score(mine)["featx-smoke/vit"]
    assert abs(got[0] - exact["featx-smoke/vit"][0]) < 0.05 and got[1] is not None
    with pytest.raises(UsageError, match="knn_index='exact'"):
        approx.score(mine, calibrate=5)
