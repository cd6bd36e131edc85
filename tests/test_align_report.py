"""featx report's paper view: alignment of language models to the vision side against their 1 − bpb
(read from the language models' feature files), one plot per metric, legends by family; the plotted
points checked against an independent computation of the scores (bench/align/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.align import reference as R
from featx.align.report import quality_points
from featx.catalog import get_spec
from featx.cli.main import main
from featx.store.local import LocalStore
from tests.test_align import _model_feats, commit

BPB = {"featx-smoke/gpt2": 1.25, "featx-smoke/llama": 0.875}
VISION = ["featx-smoke/vit", "featx-smoke/dinov2"]


@pytest.fixture()
def store_dir(tmp_path):
    latent = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    store = LocalStore(tmp_path / "features")
    feats = {}
    for n, model in enumerate([*BPB, *VISION]):
        feats[model] = _model_feats(n + 20, 30, 2, 12, latent)
        commit(store, model, feats[model], bpb=BPB.get(model))
    return tmp_path, feats


def test_quality_view_per_metric(store_dir, capsys):
    tmp, feats = store_dir
    out = tmp / "alignment"
    assert main(["align", "--output_dir", str(tmp / "features"), "--dataset", "featx-sample", "--models", *BPB,
                 *VISION, "--x", "language", "--y", "vision", "--metric", "mutual_knn", "cka", "--topk", "5",
                 "--out", str(out), "--quiet"]) == 0
    npys = [p for p in capsys.readouterr().out.split() if p.endswith(".npy")]
    assert len(npys) == 2
    for npy in npys:
        data = np.load(npy, allow_pickle=True).item()
        metric = data["metric"]
        ref = {(lm, vm): R.compute_score(R.prepare(feats[vm]), R.prepare(feats[lm]), metric, 5)[0]
               for lm in BPB for vm in VISION}
        panels = quality_points(data)
        assert list(panels)[1:] == VISION and next(iter(panels)).startswith("mean over 2 ")
        for name, points in panels.items():
            assert [p.model for p in points] == list(BPB)
            for p in points:
                assert p.quality == pytest.approx(1 - BPB[p.model])
                assert p.family == get_spec(p.model).family
                mean = np.mean([ref[(p.model, vm)] for vm in VISION])
                want = mean if name.startswith("mean") else ref[(p.model, name)]
                assert p.score == pytest.approx(want, abs=2e-5)
    vision_only = dict(data, bpb_x=[None] * len(data["bpb_x"]))
    assert quality_points(vision_only) is None

    assert main(["report", "--out", str(out)]) == 0
    report = out / "report"
    quality = sorted(report.glob("*_quality.png"))
    assert len(quality) == 2  # one per metric
    from PIL import Image

    for png in quality:
        assert np.asarray(Image.open(png).convert("L"), dtype=float).std() > 10
    page = (report / "index.html").read_text()
    assert all(f'src="{p.name}"' in page for p in quality) and "1 − bits per byte" in page
