"""featx align / report: batched metrics equal the reference's per-layer-pair definitions
(bench/align/reference.py), symmetric results, refusal of mismatched data, the CLI's .npy/CSV
and the report. Synthetic feature files are committed through the Store API (seconds, no models)."""

from __future__ import annotations

import csv
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.align import reference as R
from featx.align import metrics as M
from featx.align.run import Entry, Side, score_pairs
from featx.catalog import get_spec
from featx.cli.main import main
from featx.store import ArtifactKey, Manifest
from featx.store.local import LocalStore

# Tolerance per metric (absolute, featx vs the float64/straightforward re-implementation):
TOL = {
    "mutual_knn": 1e-6,  # same neighbour sets; only the float32 mean of the reference differs
    "cycle_knn": 1e-6,  # same
    "lcs_knn": 1e-12,  # integer DP: exact
    "edit_distance_knn": 1e-12,  # integer DP: exact
    "cka": 2e-5,  # float32 kernels and product vs float64 trace(KHLH)
    "unbiased_cka": 2e-5,  # float32 U-centred kernels vs float64 hsic_unbiased
    "cknna": 1e-6,  # float32 kernel values, float64 sums
    "svcca": 1e-8,  # float64 both (exact SVD; classical CCA)
}


def _model_feats(seed: int, n: int, layers: int, dim: int, latent: torch.Tensor) -> torch.Tensor:
    """[N, L, D] features sharing a latent structure (so scores are not trivial), with outliers."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(layers):
        proj = torch.randn(latent.shape[1], dim, generator=g)
        noise = torch.randn(n, dim, generator=g) * (0.5 + layer)
        out.append(latent @ proj + noise + 0.2)
    x = torch.stack(out, dim=1)
    x[0, 0, 0] = 40.0  # an outlier for the 0.95-quantile clamp
    return x


@pytest.fixture(scope="module")
def feats():
    latent = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    return {"a": _model_feats(1, 40, 3, 24, latent), "b": _model_feats(2, 40, 2, 16, latent),
            "c": _model_feats(3, 40, 2, 20, latent)}


# -- metrics ----------------------------------------------------------------------------------------

def test_prepare_matches_reference(feats):
    x = feats["a"].to(torch.bfloat16)  # LLM files are bf16: prepared from .float()
    ours = M.prepare_features(x)
    ref = torch.nn.functional.normalize(R.prepare(x).transpose(0, 1), p=2, dim=-1)
    assert ours.shape == (3, 40, 24)
    assert torch.equal(ours, ref)
    assert float(M.outlier_threshold(x.float())) == float(x.float().view(-1).abs().sort().values[int(0.95 * x.numel())])


@pytest.mark.parametrize("metric", M.REFERENCE_METRICS)
def test_metric_matches_straightforward(feats, metric):
    k = 5
    pa, pb = R.prepare(feats["a"]), R.prepare(feats["b"])
    sa = M.build_state(M.prepare_features(feats["a"]), [metric], k)
    sb = M.build_state(M.prepare_features(feats["b"]), [metric], k)
    ours = M.layer_scores(metric, sa, sb).numpy()
    ref = R.layer_matrix(metric, pa, pb, k)
    assert ours.shape == ref.shape == (3, 2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL[metric])
    assert np.ptp(ref) > 0 or metric in ("lcs_knn", "edit_distance_knn")  # inputs are not degenerate


@pytest.mark.parametrize("metric", sorted(M.EXACTLY_SYMMETRIC))
def test_symmetric_metrics(feats, metric):
    pa, pc = M.prepare_features(feats["a"]), M.prepare_features(feats["c"])
    sa, sc = M.build_state(pa, [metric], 5), M.build_state(pc, [metric], 5)
    ab, ba = M.layer_scores(metric, sa, sc), M.layer_scores(metric, sc, sa)
    np.testing.assert_allclose(ab.numpy(), ba.T.numpy(), rtol=0, atol=1e-6)
    self_scores = M.layer_scores(metric, sa, sa).diagonal()
    if metric in ("mutual_knn", "cka", "svcca", "edit_distance_knn"):  # unbiased_cka: h/(h+1e-6) < 1
        np.testing.assert_allclose(self_scores.numpy(), 1.0, rtol=0, atol=1e-5)


def test_cycle_knn_keeps_the_reference_argument_order(feats):
    pa, pb = R.prepare(feats["a"]), R.prepare(feats["b"])
    sa = M.build_state(M.prepare_features(feats["a"]), ["cycle_knn"], 5)
    sb = M.build_state(M.prepare_features(feats["b"]), ["cycle_knn"], 5)
    np.testing.assert_allclose(M.layer_scores("cycle_knn", sb, sa).numpy(), R.layer_matrix("cycle_knn", pb, pa, 5), atol=1e-6)


def test_dp_kernels_on_hand_made_sequences():
    a = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    b = torch.tensor([[1, 2, 3, 4, 5], [2, 3, 9, 5, 1], [1, 2, 3, 4, 5]])
    eq = a[:, :, None] == b[:, None, :]
    assert M.lcs_lengths(eq).tolist() == [R._lcs(x, y) for x, y in zip(a.tolist(), b.tolist())] == [5, 3, 1]
    assert M.edit_distances(eq).tolist() == [R._levenshtein(x, y) for x, y in zip(a.tolist(), b.tolist())]


def test_best_layer_pair_follows_the_reference_loop():
    m = torch.tensor([[0.1, 0.5, 0.2], [0.5, float("nan"), 0.5]], dtype=torch.float64)
    assert M.best_layer_pair(m) == (0.5, (0, 1))  # first strictly greater in row-major order
    assert M.best_layer_pair(torch.full((2, 2), float("nan")))[1] == (-1, -1)


def test_topk_must_leave_room():
    with pytest.raises(ValueError, match="topk"):
        M.build_state(torch.randn(1, 5, 4), ["mutual_knn"], 5)


# -- store, CLI, report -----------------------------------------------------------------------------

MODELS = {"featx-smoke/gpt2": "a", "featx-smoke/llama": "c", "featx-smoke/vit": "b", "featx-smoke/dinov2": "c"}


def commit(store: LocalStore, model: str, x: M.Features, fingerprint: str = "f" * 64, num_rows: int | None = None,
           bpb: float | None = None):
    spec = get_spec(model)
    pool = "avg" if spec.modality == "language" else "cls"
    key = ArtifactKey("featx-sample", "default", spec.file_name, pool, 0, "pt")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.pt"
        extra = {} if bpb is None else {"bpb": torch.tensor(bpb)}
        torch.save({"feats": x, "num_params": 1000 + 10 * len(model), **extra}, path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest = Manifest(model_id=model, modality=spec.modality, dataset="featx-sample", subset="default",
                            rows_fingerprint=fingerprint, num_rows=num_rows or M.num_rows(x), pool=pool, caption_idx=0,
                            format="pt", data_key=key.data, sha256=sha, size=path.stat().st_size,
                            shape=list(x.shape) if isinstance(x, torch.Tensor) else [M.num_rows(x), len(x)],
                            dtype=str(x.dtype if isinstance(x, torch.Tensor) else x[0].dtype), featx_version="test")
        store.commit(key, path, manifest)


@pytest.fixture()
def store_dir(tmp_path, feats):
    store = LocalStore(tmp_path / "features")
    for model, which in MODELS.items():
        commit(store, model, feats[which] if "gpt2" not in model else feats[which].to(torch.bfloat16))
    return tmp_path


def _align(tmp: Path, *extra: str) -> int:
    return main(["align", "--output_dir", str(tmp / "features"), "--dataset", "featx-sample", "--models", *MODELS,
                 "--out", str(tmp / "alignment"), "--quiet", *extra])


def _result_dir(tmp: Path) -> Path:
    dirs = list((tmp / "alignment" / "featx-sample" / "default").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def test_align_cli_writes_reference_npy_and_csv(store_dir, feats, capsys):
    assert _align(store_dir, "--x", "language", "--y", "vision", "--metric", "mutual_knn", "cka", "--topk", "5",
                  "--layers", "all") == 0
    folder = _result_dir(store_dir)
    assert folder.name.endswith("-language_pool-avg_" + folder.name.split("_pool-avg_")[1])
    assert folder.name.split("_pool-avg_")[1].endswith("-vision_pool-cls")
    data = np.load(folder / "mutual_knn_k5.npy", allow_pickle=True).item()
    assert (folder / "cka.npy").exists() and (folder / "cka.csv").exists()
    assert data["models_x"] == ["featx-smoke/gpt2", "featx-smoke/llama"]
    assert data["models_y"] == ["featx-smoke/vit", "featx-smoke/dinov2"]
    assert data["scores"].shape == (2, 2) and data["indices"].shape == (2, 2, 2)
    raw = {"featx-smoke/gpt2": feats["a"].to(torch.bfloat16), "featx-smoke/llama": feats["c"],
           "featx-smoke/vit": feats["b"], "featx-smoke/dinov2": feats["c"]}
    for i, mx in enumerate(data["models_x"]):
        for j, my in enumerate(data["models_y"]):
            # the reference: compute_score(y_feats, x_feats) -> (score, (y layer, x layer))
            score, idx = R.compute_score(R.prepare(raw[my]), R.prepare(raw[mx]), "mutual_knn", 5)
            assert data["scores"][i, j] == pytest.approx(score, abs=1e-6)
            assert tuple(data["indices"][i, j]) == idx
            assert (data["layer_y"][i, j], data["layer_x"][i, j]) == idx
            assert data["layer_scores"][i, j].shape == (raw[mx].shape[1], raw[my].shape[1])
            assert data["layer_scores"][i, j].max() == pytest.approx(data["scores"][i, j])
    assert data["num_rows"] == 40 and data["rows_fingerprint"] == "f" * 64
    with open(folder / "mutual_knn_k5.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    first = rows[0]
    assert (first["model_x"], first["model_y"], first["metric"], first["topk"]) == ("featx-smoke/gpt2", "featx-smoke/vit", "mutual_knn", "5")
    assert float(first["score"]) == pytest.approx(data["scores"][0, 0])
    assert int(first["layer_x"]) == data["layer_x"][0, 0] and int(first["layer_y"]) == data["layer_y"][0, 0]
    assert first["num_rows"] == "40" and first["dataset"] == "featx-sample" and first["subset"] == "default"
    assert "dataset_revision" in first


def test_align_layers_last(store_dir):
    assert _align(store_dir, "--metric", "cka", "--layers", "last") == 0
    data = np.load(_result_dir(store_dir) / "cka_layers-last.npy", allow_pickle=True).item()
    assert data["layer_x"].tolist() == [[2, 2], [1, 1]] and data["layer_y"].tolist() == [[1, 1], [1, 1]]


def test_symmetric_metrics_computed_once_per_unordered_pair(feats):
    states, entries = {}, []
    for n, (model, which) in enumerate(MODELS.items()):
        key = ArtifactKey("d", "s", model.replace("/", "_"), "avg")
        e = Entry(get_spec(model), key, num_layers=feats[which].shape[1])
        states[key] = M.build_state(M.prepare_features(feats[which]), ["mutual_knn", "cycle_knn"], 5)
        entries.append(e)
    side = Side("all", "avg", entries)
    sym = score_pairs("mutual_knn", side, side, states, 5, True, log=lambda m: None)
    assert sym.pairs_computed == 4 * 5 // 2
    np.testing.assert_allclose(sym.scores, sym.scores.T)
    assert (sym.layer_x == sym.layer_y.T).all()
    np.testing.assert_allclose(np.diag(sym.scores), 1.0)
    asym = score_pairs("cycle_knn", side, side, states, 5, False, log=lambda m: None)
    assert asym.pairs_computed == 16


def test_refuses_different_rows(store_dir, feats, capsys):
    commit(LocalStore(store_dir / "features"), "featx-smoke/dinov2", feats["c"], fingerprint="e" * 64)
    assert _align(store_dir) == 2
    err = capsys.readouterr().err
    assert "different data" in err and "featx-smoke/dinov2" in err and len(err.strip().splitlines()) == 1
    commit(LocalStore(store_dir / "features"), "featx-smoke/dinov2", feats["c"][:30])
    assert _align(store_dir) == 2
    assert "30 rows" in capsys.readouterr().err
    assert not (store_dir / "alignment").exists()


def test_refuses_missing_models(store_dir, capsys):
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--models",
                 "featx-smoke/gpt2", "featx-smoke/opt", "featx-smoke/vit", "--out", str(store_dir / "alignment")]) == 2
    err = capsys.readouterr().err.strip()
    assert "featx-smoke/opt" in err and "featx extract --models featx-smoke/opt" in err and "gpt2 " not in err
    assert len(err.splitlines()) == 1


def test_report_writes_png_and_html(store_dir, capsys):
    from PIL import Image

    assert _align(store_dir, "--metric", "mutual_knn", "--topk", "5", "--layers", "all") == 0
    assert main(["report", "--out", str(store_dir / "alignment")]) == 0
    report = store_dir / "alignment" / "report"
    pngs = sorted(report.glob("*.png"))
    assert {p.name.rsplit("_", 1)[1] for p in pngs} == {"heatmap.png", "size.png", "layers.png"}
    heat = next(p for p in pngs if p.name.endswith("_heatmap.png"))
    pixels = np.asarray(Image.open(heat).convert("L"), dtype=float)
    assert pixels.std() > 10  # not blank
    page = (report / "index.html").read_text()
    for p in pngs:
        assert f'src="{p.name}"' in page
    assert "featx-smoke/gpt2" in page and "mutual_knn_k5.csv" in page


class _RunsCode:
    """A pickle payload: unpickling it opens (creates) ``marker`` for writing."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_free_results_equal_the_reference_npy(store_dir):
    from featx.align.results import load_results

    assert _align(store_dir, "--metric", "mutual_knn", "--topk", "5", "--layers", "all") == 0
    folder = _result_dir(store_dir)
    npy = np.load(folder / "mutual_knn_k5.npy", allow_pickle=True).item()
    npz = load_results(folder / "mutual_knn_k5.npz")
    assert set(npz) == set(npy)
    for name, value in npy.items():
        if name == "layer_scores":
            assert value.shape == npz[name].shape
            for (i, j), m in np.ndenumerate(value):
                np.testing.assert_array_equal(npz[name][i, j], m)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(npz[name], value)
            assert npz[name].dtype == value.dtype
        else:
            assert npz[name] == value, name


def test_report_never_unpickles_what_it_finds(store_dir, tmp_path):
    assert _align(store_dir, "--metric", "cka") == 0
    out = store_dir / "alignment"
    marker = tmp_path / "pwned"
    evil = {"scores": np.zeros((1, 1)), "models_x": ["x"], "hook": _RunsCode(str(marker))}
    np.save(out / "featx-sample" / "crafted.npy", evil, allow_pickle=True)  # a dict like featx's own
    np.savez(out / "featx-sample" / "crafted.npz", scores=np.zeros((1, 1)),  # object arrays pickle too
             meta=np.array([_RunsCode(str(marker))], dtype=object))
    assert main(["report", "--out", str(out)]) == 0
    assert not marker.exists()
    page = (out / "report" / "index.html").read_text()
    assert "cka.npy" in page and "crafted" not in page
    np.load(out / "featx-sample" / "crafted.npy", allow_pickle=True)  # the payload was live all along
    assert marker.exists()


def test_report_without_results(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "featx align" in capsys.readouterr().err


def test_refuses_data_that_fails_its_checksum(store_dir, capsys):
    import os

    data = next((store_dir / "features").rglob("featx-smoke_vit_pool-cls.pt"))
    st = data.stat()
    raw = bytearray(data.read_bytes())
    raw[-20] ^= 0xFF  # same size, same mtime: the listing still says done, the sha256 does not
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _align(store_dir) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "featx extract --force_remake" in err


def test_modelset_sides_name_the_output(store_dir):
    ms = store_dir / "pairs.yaml"
    ms.write_text("name: pairs\nmodels:\n" + "".join(f"  - {m}\n" for m in MODELS))
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--x",
                 f"{ms}:language", "--y", f"{ms}:vision", "--metric", "svcca", "--out", str(store_dir / "alignment"),
                 "--quiet"]) == 0
    folder = _result_dir(store_dir)
    assert folder.name == "pairs-language_pool-avg_pairs-vision_pool-cls"
    assert (folder / "svcca.npy").exists()


def test_cli_lists_every_metric():
    from featx.cli.align import METRIC_CHOICES

    assert tuple(METRIC_CHOICES) == M.METRICS
