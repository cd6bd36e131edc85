"""A newcomer's flow: ``extract`` a few models, then ``status`` and ``align`` with no modelset
work on what the store holds (not the ``custom`` modelset), and say so in one line."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

MODELS = ("featx-smoke/gpt2", "featx-smoke/opt", "featx-smoke/vit")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    r = run_cli("extract", "--models", *MODELS, "--dataset", "featx-sample", "--num_samples", "12",
                "--output_dir", str(out), "--num_workers", "0")
    assert r.code == 0, r.err
    return out


def test_status_without_a_modelset_lists_what_the_store_holds(store):
    r = run_cli("status", "--dataset", "featx-sample", "--num_samples", "12", "--output_dir", str(store), "--json")
    assert r.code == 0, r.err
    assert {(row["id"], row["state"]) for row in json.loads(r.out)} == {(m, "done") for m in MODELS}
    assert r.err.strip() == ("featx status: no --modelset/--models: using the 3 models (2 language, 1 vision) "
                             "the store holds under featx-sample/default/")
    vision = run_cli("status", "--dataset", "featx-sample", "--num_samples", "12", "--modality", "vision",
                     "--output_dir", str(store), "--json")
    assert [row["id"] for row in json.loads(vision.out)] == ["featx-smoke/vit"]


def test_status_lists_failed_models_the_store_holds(store, tmp_path):
    bad = tmp_path / "broken-model"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    r = run_cli("extract", "--models", str(bad), "--dataset", "featx-sample", "--num_samples", "12",
                "--output_dir", str(store))
    assert r.code == 3
    status = run_cli("status", "--dataset", "featx-sample", "--num_samples", "12", "--output_dir", str(store), "--json")
    states = {row["id"]: row["state"] for row in json.loads(status.out)}
    assert states == {**{m: "done" for m in MODELS}, str(bad): "failed"}
    (store / "featx-sample" / "default" / "broken-model_pool-avg.failure.json").unlink()  # leave the store as built


def test_align_without_a_modelset_pairs_the_stored_models(store, tmp_path):
    r = run_cli("align", "--dataset", "featx-sample", "--output_dir", str(store), "--out", str(tmp_path),
                "--device", "cpu", "--topk", "5")
    assert r.code == 0, r.err
    npy = tmp_path / "featx-sample/default/stored-language_pool-avg_stored-vision_pool-cls/mutual_knn_k5.npy"
    assert str(npy) in r.out.splitlines()
    assert "using the 2 models (2 language) the store holds" in r.err
    assert "using the 1 model (1 vision) the store holds" in r.err


def test_an_empty_store_says_how_to_fill_it(tmp_path):
    r = run_cli("status", "--dataset", "featx-sample", "--output_dir", str(tmp_path))
    assert r.code == 2 and r.err.count("\n") == 1
    assert "holds no pt features under featx-sample/default/" in r.err and "featx extract" in r.err
