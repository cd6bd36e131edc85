"""Alignment of sharded models, from real extraction outputs (the smoke models over the offline
sample data, as tests/test_shards.py makes them): `featx align` and `featx.Alignment` read row shards
through the memory-mapped lazy view and give the one-file results; rows are compared shard by shard
(featx/align/rows.py); models extracted with --layers are scored and named by their real layers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import featx
from bench.align import reference as R
from featx.align.results import load_results
from featx.align.rows import Rows, check_same_rows
from featx.errors import UsageError
from tests.helpers import run_cli

GPT2, VIT = "featx-smoke/gpt2", "featx-smoke/vit"
DATA = ("--dataset", "featx-sample", "--num_workers", "0", "--batch_size", "1")  # batch 1: shards equal bitwise


def extract(out: Path, model: str, *extra: str) -> None:
    r = run_cli("extract", "--models", model, *DATA, "--output_dir", str(out), *extra)
    assert r.code == 0, r.err[-2000:]


def align(store: Path, out: Path, *extra: str):
    r = run_cli("align", "--output_dir", str(store), "--models", GPT2, VIT, "--x", "language", "--y", "vision",
                "--dataset", "featx-sample", "--out", str(out), "--device", "cpu", *extra)
    assert r.code == 0, r.err[-2000:]
    return r, {p.stem: load_results(p) for p in out.rglob("*.npz")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    layouts = {"whole": ((), ()), "sharded": (("--shard_rows", "20"), ("--shard_rows", "20")),
               "mixed": (("--shard_rows", "20"), None), "layers": (("--layers", "0,-1"), None)}
    folder = "featx-sample/default"
    for name, (gpt2, vit) in layouts.items():
        extract(root / name, GPT2, *gpt2)
        if vit is not None:
            extract(root / name, VIT, *vit)
        else:  # the one-file ViT, committed bytes and manifest as the whole store holds them
            for f in (root / "whole" / folder).glob("featx-smoke_vit_*"):
                shutil.copy2(f, root / name / folder / f.name)  # mtime kept: the local etag
    return {name: root / name for name in layouts}


def test_sharded_models_align_as_one_file_models(stores, tmp_path):
    _, whole = align(stores["whole"], tmp_path / "w", "--metric", "mutual_knn", "cka", "--layers", "all")
    r, sharded = align(stores["sharded"], tmp_path / "s", "--metric", "mutual_knn", "cka", "--layers", "all")
    assert "layouts differ" not in r.err  # one layout: compared shard by shard
    for stem in ("mutual_knn_k10_layers-all", "cka_layers-all"):
        stem = stem.replace("_layers-all", "")
        assert np.array_equal(sharded[stem]["scores"], whole[stem]["scores"])
        assert np.array_equal(sharded[stem]["layer_x"], whole[stem]["layer_x"])
        assert np.array_equal(np.asarray(sharded[stem]["layer_scores"][0][0]), np.asarray(whole[stem]["layer_scores"][0][0]))
    manifests = sorted((stores["sharded"] / "featx-sample/default/featx-smoke_gpt2_pool-avg").glob("*.manifest.json"))
    assert len(manifests) == 4  # really sharded
    fps = [json.loads(p.read_text())["rows_fingerprint"] for p in manifests]
    assert sharded["mutual_knn_k10"]["rows_fingerprint"] not in fps  # the combined fingerprint of the shards


def test_different_layouts_are_compared_by_data_identity_and_said(stores, tmp_path):
    r, mixed = align(stores["mixed"], tmp_path / "m")
    _, whole = align(stores["whole"], tmp_path / "w")
    assert "layouts differ" in r.err and "4 shards of 16 rows" in r.err and "one file of 64 rows" in r.err
    assert np.array_equal(mixed["mutual_knn_k10"]["scores"], whole["mutual_knn_k10"]["scores"])


def test_layers_of_a_selection_are_named_by_their_model_layer(stores, tmp_path):
    _, part = align(stores["layers"], tmp_path / "l", "--metric", "cka", "--layers", "all")
    got = part["cka"]
    assert got["layer_indices_x"] == [[0, 2]] and got["num_layers_x"] == [2]
    # the reference's preparation of the stored layers (its clamp over the two layers kept) and cka
    x = R.prepare(featx.load(GPT2, str(stores["whole"]), dataset="featx-sample").feats[:, [0, 2]])
    y = R.prepare(featx.load(VIT, str(stores["whole"]), dataset="featx-sample").feats)
    want = np.asarray(R.layer_matrix("cka", x, y))
    np.testing.assert_allclose(np.asarray(got["layer_scores"][0][0]), want, rtol=0, atol=2e-5)
    i, j = np.unravel_index(np.argmax(want), want.shape)
    assert int(got["layer_x"][0][0]) == [0, 2][i] and int(got["layer_y"][0][0]) == j


def test_the_scoring_api_reads_sharded_models(stores):
    mine = featx.load(GPT2, str(stores["whole"]), dataset="featx-sample").feats
    want = featx.Alignment([VIT], store=str(stores["whole"]), dataset="featx-sample").score(mine)
    got = featx.Alignment([VIT, GPT2], store=str(stores["sharded"]), dataset="featx-sample").score(mine)
    assert got[VIT] == want[VIT] and got[GPT2][0] == pytest.approx(1.0)  # itself: every neighbour shared


def _file_mapping(t: torch.Tensor) -> str:
    """The file /proc/self/maps names for the pages holding ``t`` ('' for anonymous memory)."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in span.split("-"))
        if lo <= ptr < hi:
            return rest[4] if len(rest) == 5 else ""
    return ""


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_shards_are_memory_mapped_and_read_a_layer_at_a_time(stores, tmp_path, fmt):
    store = stores["sharded"]
    if fmt == "safetensors":
        store = tmp_path / "st"
        extract(store, GPT2, "--shard_rows", "20", "--format", "safetensors")
    view = featx.load(GPT2, str(store), dataset="featx-sample", fmt=fmt)
    whole = featx.load(GPT2, str(stores["whole"]), dataset="featx-sample").feats
    shard = view.shard(1).feats
    assert f"shard-00001-of-00004.{fmt}" in _file_mapping(shard)  # a view of the (verified, unlinked) file
    assert torch.equal(shard, whole[16:32])
    assert torch.equal(view.layer(1), whole[:, 1]) and view.layer_indices == [0, 1, 2]


def _rows(ranges, fps, data=("featx-sample", "default", "r1")) -> Rows:
    return Rows(tuple(ranges), tuple(fps), data)


ONE = _rows([(0, 64)], ["a"])
FOUR = _rows([(0, 16), (16, 32), (32, 48), (48, 64)], ["p", "q", "r", "s"])


@pytest.mark.parametrize("models, error, notes", [
    ([("m1", FOUR), ("m2", FOUR)], None, 0),
    ([("m1", ONE), ("m2", ONE)], None, 0),
    ([("m1", FOUR), ("m2", _rows(FOUR.ranges, ["p", "q", "X", "s"]))], "different data (rows_fingerprint", 0),
    ([("m1", ONE), ("m2", _rows([(0, 64)], ["b"]))], "different data (rows_fingerprint", 0),
    ([("m1", FOUR), ("m2", ONE)], None, 1),
    ([("m1", FOUR), ("m2", _rows([(0, 60)], ["a"]))], "m2: one file of 60 rows", 0),
    ([("m1", FOUR), ("m2", _rows([(0, 64)], ["a"], ("other", "default", "r1")))], "of other/default/r1", 0),
    ([("m1", FOUR), ("m2", _rows([(0, 16), (16, 64)], ["Z", "t"]))], "rows 0-16 of m1 and m2", 0),
])
def test_rows_are_compared_shard_by_shard(models, error, notes):
    if error:
        with pytest.raises(UsageError, match="re-extract the odd ones") as err:
            check_same_rows(models)
        assert error in str(err.value) and len(str(err.value).splitlines()) == 1
    else:
        assert len(check_same_rows(models)) == notes
