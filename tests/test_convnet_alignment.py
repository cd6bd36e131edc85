"""Issue #14's end-to-end case: a ResNet and a ConvNeXt (random weights, real timm architectures)
extract on the sample data set as lists of stage features of different widths, load back through
``featx.load`` and align against a ViT and a language model with ``featx align``; every score equals
an independent loop over layer pairs (bench/align/reference.py's plain metric definitions, the
reference's preparation: a list clamped layer by layer, a stacked tensor as a whole, then the zero
floor of its ``compute_score``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import featx
from bench.align import reference as R
from featx.align import metrics as M
from tests.helpers import run_cli
from tests.test_align import TOL

LANGUAGE = ["featx-smoke/gpt2"]
VISION = ["featx-smoke/resnet", "featx-smoke/convnext", "featx-smoke/vit"]
METRICS = list(M.REFERENCE_METRICS)  # compared against the reference
TOPK = 5


def _prepared_layers(feats: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """The reference's ``prepare_features`` then ``compute_score``'s per-layer L2 normalisation."""
    if isinstance(feats, list):
        return [F.normalize(R.remove_outliers(x.float()), p=2, dim=-1) for x in feats]
    return [F.normalize(x, p=2, dim=-1) for x in R.prepare(feats).unbind(dim=1)]


def _best(metric: str, x: list[torch.Tensor], y: list[torch.Tensor]) -> tuple[float, tuple[int, int] | None]:
    """The reference's ``compute_score(y, x)`` as its measure_alignment.py calls it: y's layers in
    the outer loop, the first strictly greater score above 0 wins, indices (y layer, x layer)."""
    best, where = 0.0, None
    for j, b in enumerate(y):
        for i, a in enumerate(x):
            score = R.measure(metric, b, a, TOPK)
            if score > best:
                best, where = score, (j, i)
    return best, where


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("convnets") / "features"
    r = run_cli("extract", "--models", *LANGUAGE, *VISION, "--dataset", "featx-sample", "--num_samples", "24",
                "--num_workers", "0", "--output_dir", str(out))
    assert r.code == 0, r.err[-3000:]
    return out


def test_convnets_load_as_lists_of_their_stage_widths(store):
    for model in VISION[:2]:
        f = featx.load(model, str(store), dataset="featx-sample")
        assert f.is_list and len(f.feats) >= 2
        widths = [x.shape[1] for x in f.feats]
        assert len(set(widths)) > 1, widths  # stages of different widths, not one stacked tensor
        assert all(x.shape[0] == 24 for x in f.feats)
    assert not featx.load("featx-smoke/vit", str(store), dataset="featx-sample").is_list


def test_featx_align_equals_a_loop_over_layer_pairs(store, tmp_path):
    r = run_cli("align", "--output_dir", str(store), "--dataset", "featx-sample", "--x", "language", "--y", "vision",
                "--metric", *METRICS, "--topk", str(TOPK), "--out", str(tmp_path / "alignment"), "--quiet")
    assert r.code == 0, r.err[-3000:]
    loaded = {m: _prepared_layers(featx.load(m, str(store), dataset="featx-sample").feats) for m in LANGUAGE + VISION}
    results = [np.load(p, allow_pickle=True).item() for p in r.out.split() if p.endswith(".npy")]
    assert sorted(d["metric"] for d in results) == sorted(METRICS)
    for data in results:
        metric = data["metric"]
        xs, ys = list(data["models_x"]), list(data["models_y"])
        assert xs == LANGUAGE and sorted(ys) == sorted(VISION), (xs, ys)
        for i, mx in enumerate(xs):
            for j, my in enumerate(ys):
                score, where = _best(metric, loaded[mx], loaded[my])
                assert data["scores"][i, j] == pytest.approx(score, abs=TOL[metric]), (metric, mx, my)
                if where is not None:
                    assert tuple(int(v) for v in data["indices"][i, j]) == where, (metric, mx, my)
