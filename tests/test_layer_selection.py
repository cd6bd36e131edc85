"""`--layers` and `--feature_dtype`: a real smoke model over the offline sample data. The file
holds exactly the chosen layers of the full extraction, in the chosen dtype; both are part of the
identity (another choice is `stale`) and of the manifest, and `featx.load` says which layers it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import featx
from featx.pipeline.layers import layer_indices
from tests.helpers import run_cli

MODEL = "featx-smoke/gpt2"
DATA = ("--models", MODEL, "--dataset", "featx-sample", "--num_workers", "0")
MANIFEST = Path("featx-sample/default/featx-smoke_gpt2_pool-avg.manifest.json")


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> torch.Tensor:
    out = tmp_path_factory.mktemp("whole")
    assert run_cli("extract", *DATA, "--output_dir", str(out)).code == 0
    return featx.load(MODEL, str(out), dataset="featx-sample").feats


@pytest.mark.parametrize("spec, depth", [("last", 3), ("every:4", 33), ("every:1", 5), ("0,8,16,-1", 33),
                                         ("-1,0,-1", 9)])
def test_layer_indices_are_python_indexing(spec, depth):
    layers = list(range(depth))
    if spec == "last":
        expected = [layers[-1]]
    elif spec.startswith("every:"):
        expected = layers[::int(spec.split(":")[1])]
    else:
        expected = sorted({layers[int(i)] for i in spec.split(",")})
    assert layer_indices(spec, depth) == expected


@pytest.mark.parametrize("layers, dtype, indices", [("0,-1", "bfloat16", [0, 2]), ("every:2", None, [0, 2]),
                                                    ("last", "float16", [2])])
def test_file_holds_the_chosen_layers_in_the_chosen_dtype(whole, tmp_path, layers, dtype, indices):
    flags = (f"--layers={layers}",) + (("--feature_dtype", dtype) if dtype else ())
    r = run_cli("extract", *DATA, "--output_dir", str(tmp_path), *flags)
    assert r.code == 0, r.err[-2000:]
    got = featx.load(MODEL, str(tmp_path), dataset="featx-sample")
    expected = whole[:, indices].to(getattr(torch, dtype or "float32"))
    assert got.feats.dtype == expected.dtype and torch.equal(got.feats, expected)
    assert got.layer_indices == indices
    m = json.loads((tmp_path / MANIFEST).read_text())
    assert (m["layers"], m["layer_indices"], m["feature_dtype"], m["dtype"]) == (layers, indices, dtype,
                                                                                 dtype or "float32")
    status = "status", "--models", MODEL, "--dataset", "featx-sample", "--output_dir", str(tmp_path), "--json"
    assert json.loads(run_cli(*status, *flags).out)[0]["state"] == "done"
    row = json.loads(run_cli(*status).out)[0]  # all layers asked for: another file
    assert row["state"] == "stale" and "layers" in row["reason"]


def test_sharded_file_with_chosen_layers(whole, tmp_path):
    r = run_cli("extract", *DATA, "--output_dir", str(tmp_path), "--layers=last", "--num_shards", "2",
                "--batch_size", "1")
    assert r.code == 0, r.err[-2000:]
    view = featx.load(MODEL, str(tmp_path), dataset="featx-sample")
    assert view.layer_indices == [2] and torch.allclose(view.feats, whole[:, [2]], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flags, message", [(("--layers", "every:0"), "--layers 'every:0': give a list"),
                                            (("--layers", "first"), "--layers 'first': give a list"),
                                            (("--feature_dtype", "int8"), "invalid choice: 'int8'")])
def test_bad_selection_flags_are_one_line_exit_2(tmp_path, flags, message):
    r = run_cli("extract", *DATA, "--output_dir", str(tmp_path / "out"), *flags)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert r.code == 2 and len(lines) == 1 and message in lines[0], r.err
    assert not (tmp_path / "out").exists()
