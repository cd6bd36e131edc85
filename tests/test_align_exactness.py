"""featx align as the reference computes it: feature lists whose layers differ in width, the zero
floor on the best score, k-NN ties between duplicate rows, the quantile preparation and the
reference's result paths. Each against an independent computation written here or in
bench/align/reference.py (one layer pair at a time, plain definitions)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.align import reference as R
from featx.align import metrics as M
from featx.cli.main import main
from featx.store.local import LocalStore
from tests.test_align import MODELS, TOL, commit


def _layers(seed: int, n: int, widths: list[int]) -> list[torch.Tensor]:
    """Layers of different widths sharing a latent structure, one outlier per layer."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    out = []
    for d in widths:
        x = latent @ torch.randn(4, d, generator=g) + torch.randn(n, d, generator=g)
        x[1, 0] = 30.0
        out.append(x)
    return out


def _ref_list_prepare(layers: list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference on a list: ``prepare_features`` layer by layer (one threshold per layer), then
    ``compute_score``'s per-layer L2 normalisation."""
    return [F.normalize(R.remove_outliers(x.float()), p=2, dim=-1) for x in layers]


@pytest.mark.parametrize("metric", M.REFERENCE_METRICS)
def test_lists_of_different_widths_match_a_loop_over_layer_pairs(metric):
    a, b = _layers(1, 30, [10, 16, 32]), _layers(2, 30, [12, 20])  # svcca needs 10 wide (cca_dim)
    k = 4
    ours = M.layer_scores(metric, M.build_state(M.prepare_features(a), [metric], k),
                          M.build_state(M.prepare_features(b), [metric], k)).numpy()
    pa, pb = _ref_list_prepare(a), _ref_list_prepare(b)
    ref = np.array([[R.measure(metric, x, y, k) for y in pb] for x in pa])
    assert ours.shape == (3, 2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL[metric])


def test_cli_aligns_stored_lists_with_stored_tensors(tmp_path, capsys):
    """A convnet's list of stage features (as extraction stores them) against an LLM's [N, L, D]."""
    language = torch.stack(_layers(8, 30, [16, 16, 16]), dim=1).to(torch.bfloat16)
    convnet = _layers(9, 30, [10, 24, 48])
    store = LocalStore(tmp_path / "features")
    commit(store, "featx-smoke/gpt2", language)
    commit(store, "featx-smoke/vit", convnet)
    assert main(["align", "--output_dir", str(tmp_path / "features"), "--dataset", "featx-sample", "--models",
                 "featx-smoke/gpt2", "featx-smoke/vit", "--metric", *M.REFERENCE_METRICS, "--topk", "4", "--out",
                 str(tmp_path / "alignment"), "--quiet"]) == 0
    px = [F.normalize(x, p=2, dim=-1) for x in R.prepare(language).unbind(dim=1)]  # whole-tensor clamp
    py = _ref_list_prepare(convnet)  # per-layer clamp
    for npy in (p for p in capsys.readouterr().out.split() if p.endswith(".npy")):
        data = np.load(npy, allow_pickle=True).item()
        metric = data["metric"]
        # the reference's compute_score(y, x): first strictly greater score above 0 wins
        best, best_idx = 0, None
        for j, b in enumerate(py):
            for i, a in enumerate(px):
                score = R.measure(metric, b, a, 4)
                if score > best:
                    best, best_idx = score, (j, i)
        assert data["scores"][0, 0] == pytest.approx(best, abs=TOL[metric]), metric
        assert data["num_layers_y"] == [3] and data["num_layers_x"] == [3]
        assert best_idx is not None and tuple(data["indices"][0, 0]) == best_idx, metric


def test_a_list_is_prepared_layer_by_layer_and_a_tensor_as_a_whole():
    layers = _layers(3, 20, [6, 6])
    layers[1] = layers[1] * 10  # a per-layer threshold differs from a whole-tensor one
    as_list = M.prepare_features(layers)
    as_tensor = M.prepare_features(torch.stack(layers, dim=1))
    for got, want in zip(as_list, _ref_list_prepare(layers)):
        assert torch.equal(got, want)
    assert not torch.allclose(as_tensor[0], as_list[0])
    with pytest.raises(ValueError, match="one N"):
        M.prepare_features([torch.randn(5, 3), torch.randn(6, 3)])
    with pytest.raises(ValueError, match="svcca needs layers of at least 10"):
        M.build_state(M.prepare_features([torch.randn(20, 12), torch.randn(20, 8)]), ["svcca"])


# -- zero floor ---------------------------------------------------------------------------------------

def test_best_layer_pair_zero_floor():
    neg = torch.tensor([[-0.3, -0.1], [-0.2, float("nan")]], dtype=torch.float64)
    assert M.best_layer_pair(neg) == (0.0, (-1, -1))  # the reference: score 0, indices None
    assert M.best_layer_pair(neg, zero_floor=False) == (pytest.approx(-0.1), (0, 1))
    assert M.best_layer_pair(torch.tensor([[0.0, 0.2]]))[1] == (0, 1)


def _negative_pair():
    """Two two-layer models whose unbiased CKA is negative for every layer pair (seed found
    once; asserted below so the test cannot silently stop covering the case)."""
    g = torch.Generator().manual_seed(26)
    return torch.randn(12, 2, 6, generator=g), torch.randn(12, 2, 5, generator=g)


def test_cli_floors_at_zero_as_the_reference(tmp_path, capsys):
    x, y = _negative_pair()
    store = LocalStore(tmp_path / "features")
    commit(store, "featx-smoke/gpt2", x)
    commit(store, "featx-smoke/vit", y)
    args = ["align", "--output_dir", str(tmp_path / "features"), "--dataset", "featx-sample", "--models",
            "featx-smoke/gpt2", "featx-smoke/vit", "--metric", "unbiased_cka", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "floor")]) == 0
    assert main(args + ["--out", str(tmp_path / "raw"), "--no-zero-floor"]) == 0
    floor = np.load(next((tmp_path / "floor").rglob("unbiased_cka.npy")), allow_pickle=True).item()
    raw = np.load(next((tmp_path / "raw").rglob("unbiased_cka.npy")), allow_pickle=True).item()
    matrix = R.layer_matrix("unbiased_cka", R.prepare(y), R.prepare(x))  # A = y as compute_score(y, x)
    assert (matrix < 0).all()
    assert R.compute_score(R.prepare(y), R.prepare(x), "unbiased_cka") == (0, None)
    assert floor["scores"][0, 0] == 0.0 and np.isnan(floor["indices"][0, 0]).all() and floor["zero_floor"]
    assert raw["scores"][0, 0] == pytest.approx(matrix.max(), abs=TOL["unbiased_cka"])
    ly, lx = np.unravel_index(matrix.argmax(), matrix.shape)
    assert tuple(raw["indices"][0, 0]) == (ly, lx) and not raw["zero_floor"]
    csv_row = next((tmp_path / "floor").rglob("unbiased_cka.csv")).read_text().splitlines()[1].split(",")
    assert csv_row[5:7] == ["", ""]  # no layer pair


# -- k-NN ties ------------------------------------------------------------------------------------------

def _knn_by_rule(x: torch.Tensor, k: int) -> list[list[int]]:
    """Neighbours as the reference's ``argsort(descending=True)`` orders them on the CPU: by
    decreasing inner product, ties by increasing index, self excluded — written as a Python sort."""
    sim = (x @ x.T).tolist()
    return [sorted((j for j in range(len(sim)) if j != i), key=lambda j: (-sim[i][j], j))[:k] for i in range(len(sim))]


def _with_duplicates(seed: int, n: int, d: int) -> torch.Tensor:
    x = torch.randn(n, 1, d, generator=torch.Generator().manual_seed(seed))
    x[5] = x[2]
    x[9] = x[2]
    x[7] = x[3]
    return x


@pytest.mark.parametrize("metric", ["mutual_knn", "cycle_knn", "lcs_knn", "edit_distance_knn"])
def test_knn_ties_follow_the_reference_order(metric):
    k = 3
    a, b = _with_duplicates(4, 16, 8), _with_duplicates(5, 16, 6)
    sa = M.build_state(M.prepare_features(a), [metric], k)
    sb = M.build_state(M.prepare_features(b), [metric], k)
    pa, pb = M.prepare_features(a)[0], M.prepare_features(b)[0]
    want_a = _knn_by_rule(pa, k)
    assert sa.knn[0].tolist() == want_a
    assert R.nearest_neighbors(pa, k).tolist() == want_a  # the reference's own op agrees on this data
    assert want_a[2][:2] == [5, 9]  # ties present: 2's duplicates, lower index first

    ka, kb = torch.tensor(want_a), torch.tensor(_knn_by_rule(pb, k))
    if metric == "mutual_knn":
        ref = np.mean([len(set(x) & set(y)) / k for x, y in zip(ka.tolist(), kb.tolist())])
    elif metric == "cycle_knn":
        ref = np.mean([any(i in ka[j].tolist() for j in kb[i].tolist()) for i in range(len(ka))])
    elif metric == "lcs_knn":
        ref = np.mean([R._lcs(x, y) for x, y in zip(ka.tolist(), kb.tolist())])
    else:
        ref = 1 - np.mean([R._levenshtein(x, y) for x, y in zip(ka.tolist(), kb.tolist())]) / k
    assert float(M.layer_scores(metric, sa, sb)[0, 0]) == pytest.approx(ref, abs=1e-9)


def test_nearest_neighbors_on_many_ties():
    """Small integer similarities (ties everywhere, at the k-th place too) against a Python sort."""
    hat = torch.randint(0, 4, (3, 12, 12), generator=torch.Generator().manual_seed(11)).float()
    hat.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    hat[0, 0] = torch.arange(12, 0, -1).float()  # one row without ties: the topk path
    hat[0, 0, 0] = float("-inf")
    for k in (1, 4, 11):
        got = M.nearest_neighbors(hat, k)
        for layer in range(3):
            for i in range(12):
                row = hat[layer, i].tolist()
                assert got[layer, i].tolist() == sorted(range(12), key=lambda j: (-row[j], j))[:k]


def test_cknna_takes_its_neighbours_with_topk_as_the_reference():
    """The reference's cknna picks neighbours with torch.topk, the other k-NN metrics with argsort:
    where duplicates tie at the k-th place the two sets differ, and cknna must use topk's."""
    k = 3
    a, b = _with_duplicates(4, 16, 8), _with_duplicates(5, 16, 6)
    pa, pb = M.prepare_features(a), M.prepare_features(b)
    sa = M.build_state(pa, ["cknna", "mutual_knn"], k)
    assert sa.cknna_knn is not sa.knn  # this data has a tie at the k-th place
    ours = float(M.layer_scores("cknna", sa, M.build_state(pb, ["cknna"], k))[0, 0])
    assert ours == pytest.approx(R.cknna(pa[0], pb[0], k), abs=TOL["cknna"])
    assert M.build_state(pa, ["cknna", "mutual_knn"], 2).cknna_knn is not None


# -- quantile preparation -------------------------------------------------------------------------------

def test_quantile_preparation_is_the_reference_default():
    x = torch.randn(10, 3, 7, generator=torch.Generator().manual_seed(6))
    x[0, 0, 0] = 50.0
    per_row = [np.quantile(np.abs(r.numpy()).ravel(), 0.95) for r in x]  # numpy's linear = torch.quantile's
    t = float(np.mean(per_row))
    assert float(M.outlier_threshold(x, outliers="quantile")) == pytest.approx(t, rel=1e-6)
    want = F.normalize(x.clamp(-t, t).transpose(0, 1), p=2, dim=-1)
    torch.testing.assert_close(M.prepare_features(x, outliers="quantile"), want, rtol=0, atol=1e-6)
    assert float(M.outlier_threshold(x)) != pytest.approx(t)  # exact differs on this data
    layers = [x[:, 0], x[:, 1, :4]]
    for got, layer in zip(M.prepare_features(layers, outliers="quantile"), layers):
        tl = float(np.mean([np.quantile(np.abs(r.numpy()), 0.95) for r in layer]))
        torch.testing.assert_close(got, F.normalize(layer.clamp(-tl, tl), p=2, dim=-1), rtol=0, atol=1e-6)


# -- the reference's layout -------------------------------------------------------------------------------

def to_alignment_filename(output_dir, dataset, modelset, modality_x, pool_x, prompt_x, modality_y, pool_y, prompt_y,
                          metric, topk):
    """platonic-rep utils.to_alignment_filename, rewritten from its source."""
    name = f"{metric}_k{topk}.npy" if "knn" in metric else f"{metric}.npy"
    sides = f"{modality_x}_pool-{pool_x}_prompt-{prompt_x}_{modality_y}_pool-{pool_y}_prompt-{prompt_y}"
    return os.path.join(output_dir, dataset, modelset, sides, name)


@pytest.fixture()
def store_dir(tmp_path):
    from tests.test_align import _model_feats

    latent = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    store = LocalStore(tmp_path / "features")
    for n, model in enumerate(MODELS):
        commit(store, model, _model_feats(n, 40, 2, 12, latent))
    ms = tmp_path / "pairs.yaml"
    ms.write_text("name: pairs\nmodels:\n" + "".join(f"  - {m}\n" for m in MODELS))
    return tmp_path


def test_reference_layout_writes_the_reference_paths(store_dir, capsys):
    out = store_dir / "alignment"
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--modelset",
                 str(store_dir / "pairs.yaml"), "--x", "language", "--y", "vision", "--metric", *M.METRICS,
                 "--topk", "5", "--layout", "reference", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    for metric in M.METRICS:
        path = to_alignment_filename(str(out), "featx-sample", "pairs", "language", "avg", False, "vision", "cls",
                                     False, metric, 5)
        assert path in printed
        data = np.load(path, allow_pickle=True).item()  # the reference's reader: np.load(...).item()
        assert data["scores"].shape == (2, 2) and data["indices"].shape == (2, 2, 2)
    assert not (out / "featx-sample" / "default").exists()


def test_reference_layout_needs_one_modelset(store_dir, capsys):
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--x",
                 f"{store_dir / 'pairs.yaml'}:language", "--y", "smoke:vision", "--layout", "reference",
                 "--out", str(store_dir / "alignment")]) == 2
    err = capsys.readouterr().err.strip()
    assert "one modelset" in err and len(err.splitlines()) == 1
    assert not (store_dir / "alignment").exists()


def test_cli_offers_every_outlier_mode():
    from featx.cli.align import OUTLIER_MODES

    assert OUTLIER_MODES == M.OUTLIER_MODES
