"""Permutation-null calibration (featx.align.calibration) against the authors' package
``calibrated-similarity`` (``calibrate_layers``, agg="max") on the same permutations, with the
reference's metric functions as its per-layer-pair callback; and the issue's acceptance pair: an
unrelated model calibrates to 0 with p > 0.05, a noisy rotation of a stored model to a high score
with p = 1/(K+1)."""

from __future__ import annotations

import pytest
import torch
from calibrated_similarity import calibrate, calibrate_layers

import featx
from bench.align import reference as R
from featx.align import calibration as C
from featx.align import metrics as M
from featx.errors import UsageError
from featx.store.local import LocalStore
from tests.test_align import commit

N, K, TOPK, SEED = 40, 30, 5, 7


def _related(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(N, 4, generator=g)
    a = torch.stack([latent @ torch.randn(4, 16, generator=g) + 2 * torch.randn(N, 16, generator=g)
                     for _ in range(3)], dim=1)
    b = torch.stack([latent @ torch.randn(4, 12, generator=g) + 2 * torch.randn(N, 12, generator=g)
                     for _ in range(2)], dim=1)
    return a, b


@pytest.mark.parametrize("related", [True, False])
@pytest.mark.parametrize("metric", ["mutual_knn", "cka", "lcs_knn"])
def test_equals_calibrated_similarity_calibrate_layers(metric, related):
    a, b = _related(1)
    if not related:  # the null holds: calibrated 0, p well above alpha
        a = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    pa, pb = M.prepare_features(a), M.prepare_features(b)
    sb = M.build_state(pb, [metric], TOPK)
    obs, _ = C.statistic(M.layer_scores(metric, M.build_state(pa, [metric], TOPK), sb))
    null = C.null_statistics(metric, pa, [sb], C.permutations(N, K, SEED), TOPK)[0]
    smax = C.upper_bound(metric, TOPK)
    got = C.calibrate(obs, null, 0.05, smax)
    # the package permutes its second list's rows: hand it A (featx's permuted side) second
    want = calibrate_layers(list(pb), list(pa), lambda x, y: R.measure(metric, y, x, TOPK), agg="max", K=K,
                            alpha=0.05, smax=smax, generator=torch.Generator().manual_seed(SEED))
    assert got[1] == pytest.approx(float(want[1]), abs=1e-7)  # p-value: counts over the same permutations
    assert got[0] == pytest.approx(float(want[0]), abs=1e-5)
    assert got[2] == pytest.approx(float(want[2]), abs=1e-5)


def test_scalar_case_equals_calibrate():
    """One layer each: Algorithm 2 with a 1x1 search is the package's scalar ``calibrate``."""
    a, b = _related(2)
    pa, pb = M.prepare_features(a[:, :1]), M.prepare_features(b[:, :1])
    sb = M.build_state(pb, ["cka"], TOPK)
    obs, _ = C.statistic(M.layer_scores("cka", M.build_state(pa, ["cka"], TOPK), sb))
    null = C.null_statistics("cka", pa, [sb], C.permutations(N, K, SEED), TOPK)[0]
    got = C.calibrate(obs, null, 0.1, 1.0)
    want = calibrate(pb[0], pa[0], lambda x, y: R.measure("cka", y, x), K=K, alpha=0.1, smax=1.0,
                     generator=torch.Generator().manual_seed(SEED))
    assert got == pytest.approx(tuple(float(w) for w in want), abs=1e-5)


def test_unrelated_is_zero_and_a_noisy_rotation_is_significant(tmp_path):
    g = torch.Generator().manual_seed(3)
    n, k = 60, 50
    stored = torch.randn(n, 2, 16, generator=g)
    store = LocalStore(tmp_path / "features")
    commit(store, "featx-smoke/vit", stored, num_rows=n)
    commit(store, "featx-smoke/dinov2", torch.randn(n, 2, 16, generator=g), num_rows=n)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    mine = stored @ q + 0.1 * torch.randn(n, 2, 16, generator=g)
    align = featx.Alignment(["featx-smoke/vit", "featx-smoke/dinov2"], str(tmp_path / "features"),
                            dataset="featx-sample", device="cpu")
    res = align.score(mine, "mutual_knn", topk=5, calibrate=k, seed=0)
    assert res["featx-smoke/vit"].p_value == 1 / (k + 1) and res["featx-smoke/vit"].calibrated > 0.5
    assert res["featx-smoke/dinov2"].p_value > 0.05 and res["featx-smoke/dinov2"].calibrated == 0
    assert res["featx-smoke/dinov2"].score > 0  # the raw score alone is not zero
    assert align.score(mine, "mutual_knn", topk=5, calibrate=k, seed=0) == res  # seeded
    with pytest.raises(UsageError, match="distance"):
        align.score(mine, "orthogonal_procrustes", calibrate=k)


def test_cli_calibrate_equals_the_api_and_the_package(tmp_path, capsys):
    import csv

    from featx.align.results import load_results
    from featx.cli.main import main

    g = torch.Generator().manual_seed(4)
    n, k, models = 50, 40, ["featx-smoke/vit", "featx-smoke/dinov2"]
    store = LocalStore(tmp_path / "features")
    stored = [torch.randn(n, 2, 16, generator=g), torch.randn(n, 3, 12, generator=g)]
    for model, x in zip(models, stored):
        commit(store, model, x, num_rows=n)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    mine = stored[0] @ q + 0.3 * torch.randn(n, 2, 16, generator=g)
    torch.save({"feats": mine}, tmp_path / "mine.pt")
    assert main(["align", "--output_dir", str(tmp_path / "features"), "--dataset", "featx-sample", "--models",
                 *models, "--x", "vision", "--y", str(tmp_path / "mine.pt"), "--metric", "mutual_knn", "cka",
                 "--topk", "5", "--calibrate", str(k), "--seed", "3", "--out", str(tmp_path / "al"), "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    align = featx.Alignment(models, str(tmp_path / "features"), dataset="featx-sample", device="cpu")
    for metric in ("mutual_knn", "cka"):
        npy = next(p for p in printed if p.endswith(f"/{M.result_name(metric, 5)}.npy"))
        data = load_results(npy.replace(".npy", ".npz"))
        assert data["calibrate"] == k and data["seed"] == 3 and data["alpha"] == 0.05
        api = align.score(mine, metric, topk=5, calibrate=k, seed=3)
        for i, model in enumerate(models):
            assert data["raw_max"][i, 0] == pytest.approx(api[model].score, abs=1e-12)
            assert data["calibrated_scores"][i, 0] == pytest.approx(api[model].calibrated, abs=1e-12)
            assert data["p_values"][i, 0] == api[model].p_value
            assert data["thresholds"][i, 0] == pytest.approx(api[model].threshold, abs=1e-12)
        # the package on the first pair: it permutes its second list (mine), as featx permutes the y side
        px = list(M.prepare_features(stored[0]))
        py = list(M.prepare_features(mine))
        want = calibrate_layers(px, py, lambda a, b: R.measure(metric, b, a, 5), K=k, alpha=0.05,
                                generator=torch.Generator().manual_seed(3))
        assert data["p_values"][0, 0] == pytest.approx(float(want[1]), abs=1e-7)
        assert data["calibrated_scores"][0, 0] == pytest.approx(float(want[0]), abs=1e-5)
        assert data["p_values"][0, 0] == 1 / (k + 1) and data["p_values"][1, 0] > 0.05
        rows = list(csv.DictReader(open(npy.replace(".npy", ".csv"))))
        assert [float(r["p_value"]) for r in rows] == pytest.approx(data["p_values"][:, 0].tolist())


def test_cli_refuses_calibrating_a_distance(tmp_path, capsys):
    from featx.cli.main import main

    assert main(["align", "--output_dir", str(tmp_path), "--x", "vision", "--y", "language", "--metric",
                 "orthogonal_procrustes", "--calibrate", "10"]) != 0
    assert "similarities" in capsys.readouterr().err


def test_report_marks_non_significant_pairs(tmp_path, capsys):
    from featx.align.report import write_report
    from featx.cli.main import main

    g = torch.Generator().manual_seed(8)  # a valid null puts an unrelated pair below alpha 1 time in 20
    n, models = 40, ["featx-smoke/vit", "featx-smoke/dinov2"]
    store = LocalStore(tmp_path / "features")
    base = torch.randn(n, 2, 16, generator=g)
    commit(store, models[0], base, num_rows=n)
    commit(store, models[1], torch.randn(n, 2, 16, generator=g), num_rows=n)
    torch.save({"feats": base + 0.1 * torch.randn(n, 2, 16, generator=g)}, tmp_path / "mine.pt")
    assert main(["align", "--output_dir", str(tmp_path / "features"), "--dataset", "featx-sample", "--models",
                 *models, "--x", "vision", "--y", str(tmp_path / "mine.pt"), "--metric", "mutual_knn", "--topk", "5",
                 "--calibrate", "20", "--out", str(tmp_path / "al"), "--quiet"]) == 0
    page = write_report(tmp_path / "al").read_text()
    assert "<th>p-value</th>" in page and page.count("(n.s.)") == 1  # the unrelated model only
    assert (tmp_path / "al" / "report").glob("*_heatmap.png")


SIMILARITIES = [m for m in M.METRICS if not M.is_distance(m)]


@pytest.fixture(scope="module")
def widths_pair():
    """Layers of different widths (one wider than N) sharing a latent, so nulls and scores differ."""
    g = torch.Generator().manual_seed(11)
    latent = torch.randn(N, 4, generator=g)
    side = lambda widths: M.prepare_features([latent @ torch.randn(4, w, generator=g)  # noqa: E731
                                              + torch.randn(N, w, generator=g) for w in widths])
    return side([12, 48]), side([16, 24, 20])


def test_permuted_state_scores_as_the_rebuilt_state(widths_pair):
    """Every measure (distances too): the state mapped by the permutation scores as the state built
    from the permuted rows, against a third state, for every layer pair."""
    pa, pb = widths_pair
    st = M.build_state(pa, M.METRICS, TOPK)
    sb = M.build_state(pb, M.METRICS, TOPK)
    for perm in C.permutations(N, 2, SEED):
        mapped, rebuilt = C.permuted_state(st, perm), M.build_state(C.permute(pa, perm), M.METRICS, TOPK)
        assert torch.equal(mapped.knn, rebuilt.knn) and torch.equal(mapped.knn_vals, rebuilt.knn_vals)
        for metric in M.METRICS:
            torch.testing.assert_close(M.layer_scores(metric, mapped, sb), M.layer_scores(metric, rebuilt, sb),
                                       atol=1e-5, rtol=0, msg=metric)


@pytest.mark.parametrize("metric", SIMILARITIES)
def test_batched_null_equals_rebuilding_per_permutation(widths_pair, metric):
    """The null of every similarity from one state equals rebuilding the permuted side per
    permutation (what the package's callback does), several other models at once."""
    pa, pb = widths_pair
    others = [M.build_state(pb, [metric], TOPK), M.build_state(pa, [metric], TOPK)]
    perms = C.permutations(N, 12, SEED)
    torch.testing.assert_close(C.null_statistics(metric, pa, others, perms, TOPK),
                               C._rebuilt_nulls(metric, pa, others, perms, TOPK), atol=1e-5, rtol=0)


@pytest.mark.parametrize("metric", [m for m in SIMILARITIES if M.uses_topk(m)])
def test_tied_rows_are_repicked_as_a_rebuild_picks_them(metric):
    """Duplicate rows tie and the tie rule picks by index, so a permutation changes which of them are
    neighbours: those rows are re-picked per permutation, and the null equals rebuilding."""
    a, b = _related(3)
    a[1], a[7] = a[4], a[4]  # three equal rows: ties at every k
    pa, pb = M.prepare_features(a), M.prepare_features(b)
    ties = C.tied_rows(pa, TOPK)
    assert ties.count and not C.tied_rows(pb, TOPK).count
    others = [M.build_state(pb, [metric], TOPK)]
    perms = C.permutations(N, K, SEED)
    torch.testing.assert_close(C.null_statistics(metric, pa, others, perms, TOPK),
                               C._rebuilt_nulls(metric, pa, others, perms, TOPK), atol=1e-6, rtol=0)


def test_tied_rows_equal_the_package():
    a, b = _related(3)
    a[1], a[7] = a[4], a[4]
    pa, pb = M.prepare_features(a), M.prepare_features(b)
    sb = M.build_state(pb, ["mutual_knn"], TOPK)
    null = C.null_statistics("mutual_knn", pa, [sb], C.permutations(N, K, SEED), TOPK)[0]
    obs, _ = C.statistic(M.layer_scores("mutual_knn", M.build_state(pa, ["mutual_knn"], TOPK), sb))
    got = C.calibrate(obs, null, 0.05, 1.0)
    want = calibrate_layers(list(pb), list(pa), lambda x, y: R.measure("mutual_knn", y, x, TOPK), agg="max", K=K,
                            alpha=0.05, smax=1.0, generator=torch.Generator().manual_seed(SEED))
    assert got == pytest.approx(tuple(float(w) for w in want), abs=1e-7)


def test_calibration_benchmark_reports_equal_values():
    from bench.align.calibration import case

    got = case("mutual_knn", 60, 2, 5)
    assert got["featx"]["p_value"] == pytest.approx(got["calibrated_similarity"]["p_value"], abs=1e-7)
    assert got["featx"] == got["featx_rebuild"] and got["featx_s"] > 0 and got["calibrated_similarity_s"] > 0
