"""One artifact-key rule: what ``featx extract`` writes is what ``featx.load``, ``featx status``
and the controller look for, for a hub id, its alias (``prh``) and a local data set path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import featx
from featx.catalog import get_spec
from featx.data.sample import build_sample
from featx.kube.config import RunConfig
from featx.pipeline.keys import artifact_key
from tests.helpers import run_cli

GPT2, VIT = "featx-smoke/gpt2", "featx-smoke/vit"


@pytest.fixture(scope="module")
def local_set(tmp_path_factory) -> Path:
    return build_sample(tmp_path_factory.mktemp("data") / "my-set", rows=6)


@pytest.fixture
def offline_hub(monkeypatch, local_set):
    """``datasets.load_dataset`` answers ``minhuh/prh`` from the local sample (there is no hub here);
    everything after the download is featx's real hub path."""
    import datasets

    lines = [json.loads(x) for x in (local_set / "captions.jsonl").read_text().splitlines()]
    table = datasets.Dataset.from_dict({"image": [str(local_set / r["file"]) for r in lines],
                                        "text": [r["text"] for r in lines]}).cast_column("image", datasets.Image())
    asked = []

    def load_dataset(repo, revision=None, split=None):
        asked.append((repo, revision, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


@pytest.mark.parametrize("given,written", [("prh", "minhuh/prh"), ("minhuh/prh", "minhuh/prh")])
def test_load_reads_what_extract_wrote_for_hub_ids_and_aliases(tmp_path, offline_hub, given, written):
    r = run_cli("extract", "--models", GPT2, VIT, "--dataset", given, "--output_dir", str(tmp_path),
                "--num_workers", "0")
    assert r.code == 0, r.err
    assert offline_hub == [("minhuh/prh", "wit_1024", "train")]
    assert (tmp_path / written / "wit_1024" / "featx-smoke_gpt2_pool-avg.pt").is_file()
    for dataset in ("prh", "minhuh/prh"):  # either spelling reads the one file
        for model in (GPT2, VIT):
            got = featx.load(model, str(tmp_path), dataset=dataset)
            assert got.feats.shape[0] == 6 and got.manifest.dataset == "minhuh/prh"
    status = run_cli("status", "--models", GPT2, VIT, "--dataset", given, "--output_dir", str(tmp_path), "--json")
    assert [row["state"] for row in json.loads(status.out)] == ["done", "done"]


def test_load_reads_what_extract_wrote_for_a_local_path(tmp_path, local_set):
    r = run_cli("extract", "--models", GPT2, VIT, "--dataset", str(local_set), "--caption_idx", "1",
                "--output_dir", str(tmp_path), "--num_workers", "0")
    assert r.code == 0, r.err
    name = f"my-set-{hashlib.sha256(str(local_set.resolve()).encode()).hexdigest()[:8]}"  # folder name + path hash
    assert (tmp_path / name / "default" / "featx-smoke_gpt2_pool-avg_cid-1.pt").is_file()
    assert featx.load(GPT2, str(tmp_path), dataset=str(local_set), caption_idx=1).feats.shape[0] == 6
    # vision files carry no caption index, whichever caption the run named
    assert featx.load(VIT, str(tmp_path), dataset=str(local_set), caption_idx=1).manifest.caption_idx == 0


@pytest.mark.parametrize("dataset,subset,stem", [
    ("prh", None, "minhuh/prh/wit_1024/featx-smoke_gpt2_pool-avg"),
    ("minhuh/prh", "wit_2048", "minhuh/prh/wit_2048/featx-smoke_gpt2_pool-avg"),
    ("featx-sample", None, "featx-sample/default/featx-smoke_gpt2_pool-avg"),
    ("/data/sets/my-set", "v1",
     f"my-set-{hashlib.sha256(b'/data/sets/my-set').hexdigest()[:8]}/v1/featx-smoke_gpt2_pool-avg"),
])
def test_the_controller_names_artifacts_with_the_same_rule(dataset, subset, stem):
    key = artifact_key(get_spec(GPT2), dataset, subset)
    assert key.stem == stem
    config = RunConfig.from_dict({"release": "r", "fullname": "r-featx", "modelset": [GPT2], "dataset": dataset,
                                  "subset": subset, "store": "s3://b", "concurrency": 1, "attempts": 1,
                                  "gpuClasses": [{"name": "cpu", "memoryMiB": 4096, "resource": ""}],
                                  "jobTemplate": {}})
    (desired,) = config.desired()
    assert desired.key == key


def test_rows_without_a_data_set_id_cannot_name_an_artifact():
    from featx.errors import UsageError

    with pytest.raises(UsageError, match="--dataset is empty"):
        artifact_key(get_spec(GPT2), "")
