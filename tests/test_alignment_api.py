"""featx.Alignment (platonic.Alignment's ``score`` over a featx store) and ``featx align`` with a
side of one's own feature files: the API equals the CLI on the same files for every metric, stored
models are read and prepared once however often ``score`` is called, and bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featx
from featx.align import metrics as M
from featx.cli.main import main
from featx.errors import UsageError
from featx.store.local import LocalStore
from tests.test_align import MODELS, _model_feats, commit
from tests.test_align_exactness import _layers, _negative_pair

N = 40
VISION = ["featx-smoke/vit", "featx-smoke/dinov2"]


class CountingStore(LocalStore):
    """A real local store that counts the feature files it hands out."""

    reads = 0

    def verify(self, key, dest):
        CountingStore.reads += 1
        return super().verify(key, dest)


@pytest.fixture()
def store_dir(tmp_path):
    latent = torch.randn(N, 6, generator=torch.Generator().manual_seed(0))
    store = LocalStore(tmp_path / "features")
    for n, model in enumerate(MODELS):
        commit(store, model, _model_feats(n + 10, N, 2 + n % 2, 12 + n, latent))
    return tmp_path


@pytest.fixture()
def mine(tmp_path):
    """A convnet-like model under training: four stages of different widths."""
    feats = _layers(7, N, [10, 16, 24, 32])
    path = tmp_path / "mine.pt"
    torch.save({"feats": feats}, path)
    return feats, path


def test_score_equals_featx_align_for_every_metric(store_dir, mine, capsys):
    feats, path = mine
    align = featx.Alignment(VISION, str(store_dir / "features"), dataset="featx-sample", device="cpu")
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--models",
                 *VISION, "--x", "vision", "--y", str(path), "--metric", *M.METRICS, "--topk", "5",
                 "--out", str(store_dir / "alignment"), "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    for metric in M.METRICS:
        got = align.score(feats, metric=metric, topk=5)
        npy = next(p for p in printed if p.endswith(f"/{M.result_name(metric, 5)}.npy"))
        data = np.load(npy, allow_pickle=True).item()
        assert data["models_x"] == VISION and data["models_y"] == [str(path)]
        assert list(got) == VISION
        for i, model in enumerate(VISION):
            score, layers = got[model]
            assert score == pytest.approx(data["scores"][i, 0], abs=1e-12), (metric, model)
            want = tuple(int(v) for v in data["indices"][i, 0]) if np.isfinite(data["indices"][i, 0]).all() else None
            assert layers == want  # (layer of mine, layer of the stored model)
    assert "mine_mine" not in npy and "/mine/" not in npy and npy.split("/")[-2].endswith("_mine")


def test_stored_models_are_read_and_prepared_once(store_dir, mine, monkeypatch):
    feats, _ = mine
    calls = {"prepare": 0, "state": 0}
    prepare, build = M.prepare_features, M.build_state

    def counting_prepare(*a, **kw):
        calls["prepare"] += 1
        return prepare(*a, **kw)

    def counting_build(*a, **kw):
        calls["state"] += 1
        return build(*a, **kw)

    monkeypatch.setattr(M, "prepare_features", counting_prepare)
    monkeypatch.setattr(M, "build_state", counting_build)
    CountingStore.reads = 0
    align = featx.Alignment(VISION, CountingStore(store_dir / "features"), dataset="featx-sample", device="cpu")
    assert (CountingStore.reads, calls["prepare"], calls["state"]) == (2, 2, 0)
    first = align.score(feats, "mutual_knn", topk=5)
    assert (CountingStore.reads, calls["prepare"], calls["state"]) == (2, 3, 3)  # mine + each model's k-NN
    moved = [f + 0.1 * torch.randn_like(f) for f in feats]  # the next training step
    second = align.score(moved, "mutual_knn", topk=5)
    assert (CountingStore.reads, calls["prepare"], calls["state"]) == (2, 4, 4)  # only mine again
    assert second != first
    align.score(moved, "cka")
    assert (CountingStore.reads, calls["state"]) == (2, 7)  # a new metric: the models' kernels once


def test_modelset_and_stored_modality_select_models(store_dir, mine):
    feats, _ = mine
    by_modality = featx.Alignment("vision", str(store_dir / "features"), dataset="featx-sample", device="cpu")
    assert by_modality.models == sorted(VISION)
    ms = store_dir / "pairs.yaml"
    ms.write_text("name: pairs\nmodels:\n" + "".join(f"  - {m}\n" for m in MODELS))
    by_set = featx.Alignment(f"{ms}:language", str(store_dir / "features"), dataset="featx-sample", device="cpu")
    assert by_set.models == ["featx-smoke/gpt2", "featx-smoke/llama"]
    assert set(by_set.score(feats)) == set(by_set.models)


def test_zero_floor_and_bad_input(tmp_path):
    x, y = _negative_pair()
    commit(LocalStore(tmp_path / "features"), "featx-smoke/vit", y)
    floored = featx.Alignment(["featx-smoke/vit"], str(tmp_path / "features"), dataset="featx-sample", device="cpu")
    assert floored.score(x, "unbiased_cka") == {"featx-smoke/vit": (0.0, None)}
    raw = featx.Alignment(["featx-smoke/vit"], str(tmp_path / "features"), dataset="featx-sample", device="cpu",
                          zero_floor=False)
    score, layers = raw.score(x, "unbiased_cka")["featx-smoke/vit"]
    assert score < 0 and layers is not None
    with pytest.raises(UsageError, match="11 rows, the stored models 12"):
        floored.score(x[:11], "mutual_knn", topk=3)
    with pytest.raises(UsageError, match="unknown metric"):
        floored.score(x, "knn")
    with pytest.raises(UsageError, match="not committed"):
        featx.Alignment(["featx-smoke/dinov2"], str(tmp_path / "features"), dataset="featx-sample")


def test_a_directory_of_feature_files_is_a_side(store_dir, mine, capsys):
    feats, _ = mine
    own = store_dir / "checkpoints"
    own.mkdir()
    torch.save({"feats": feats}, own / "step1.pt")
    torch.save(torch.stack([f[:, :10] for f in feats], dim=1), own / "step2.pt")  # a bare [N, L, D] tensor
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--models",
                 *VISION, "--x", str(own), "--y", "vision", "--metric", "cka", "--out", str(store_dir / "alignment"),
                 "--quiet"]) == 0
    npy = capsys.readouterr().out.split()[0]
    data = np.load(npy, allow_pickle=True).item()
    assert data["models_x"] == [str(own / "step1.pt"), str(own / "step2.pt")]
    assert data["num_layers_x"] == [4, 4] and data["family_x"] == ["file", "file"]
    assert npy.split("/")[-2] == "checkpoints_" + data["label_y"] + "_pool-cls"


@pytest.mark.parametrize("content, message", [
    (b"not a pickle", "not a readable .pt feature file"),
    (None, "no features in it"),
])
def test_bad_feature_files_are_one_line(store_dir, content, message, capsys):
    path = store_dir / "bad.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--models",
                 *VISION, "--x", str(path), "--y", "vision", "--out", str(store_dir / "alignment"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (store_dir / "alignment").exists()


def test_files_with_other_rows_are_refused(store_dir, capsys):
    path = store_dir / "short.pt"
    torch.save({"feats": torch.randn(N - 1, 2, 12)}, path)
    assert main(["align", "--output_dir", str(store_dir / "features"), "--dataset", "featx-sample", "--models",
                 *VISION, "--x", str(path), "--y", "vision", "--out", str(store_dir / "alignment"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different row counts" in err and f"{N - 1} rows" in err and len(err.splitlines()) == 1
