"""`featx extract --store s3://…` end to end against the real SeaweedFS the suite starts."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from featx.catalog import load_modelset
from tests.helpers import FEATX, kill_mid_extraction, run_featx

pytestmark = pytest.mark.s3
SMOKE = load_modelset("smoke").models
DATA = ["--dataset", "featx-sample"]


def _states(url: str, env: dict, *extra: str) -> dict[str, dict]:
    r = run_featx("status", "--modelset", "smoke", *DATA, "--store", url, "--json", *extra, env=env)
    assert r.code == 0, r.err
    return {row["id"]: row for row in json.loads(r.out)}


def _keys(seaweedfs, prefix: str) -> dict[str, str]:
    objs = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in objs}


@pytest.fixture(scope="module")
def committed(seaweedfs, tmp_path_factory):
    url = seaweedfs.url("smoke-run")
    env = {**seaweedfs.env(), "FEATX_HOME": str(tmp_path_factory.mktemp("home"))}
    r = run_featx("extract", "--modelset", "smoke", *DATA, "--store", url, "--num_workers", "0", env=env)
    assert r.code == 0, r.err[-3000:]
    return url, env


def test_full_smoke_run_is_all_done_in_s3(committed, seaweedfs):
    url, env = committed
    states = _states(url, env)
    assert {s["state"] for s in states.values()} == {"done"} and len(states) == len(SMOKE)
    keys = _keys(seaweedfs, "smoke-run/")
    assert sum(k.endswith(".pt") for k in keys) == len(SMOKE)
    assert sum(k.endswith(".manifest.json") for k in keys) == len(SMOKE)


def test_second_run_skips_and_uploads_nothing(committed, seaweedfs):
    url, env = committed
    before = _keys(seaweedfs, "smoke-run/")
    r = run_featx("extract", "--modelset", "smoke", *DATA, "--store", url, env=env)
    assert r.code == 0 and r.out.count("skipped") == len(SMOKE)
    assert _keys(seaweedfs, "smoke-run/") == before  # same objects, same ETags: nothing re-uploaded


def test_altered_object_is_corrupt_then_re_extracted(committed, seaweedfs):
    url, env = committed
    key = "smoke-run/featx-sample/default/featx-smoke_opt_pool-avg.pt"
    client = seaweedfs.client()
    client.put_object(Bucket=seaweedfs.bucket, Key=key, Body=b"not the features")
    assert _states(url, env)["featx-smoke/opt"]["state"] == "corrupt"
    r = run_featx("extract", "--modelset", "smoke", *DATA, "--store", url, env=env)
    assert r.code == 0 and r.out.count("committed") == 1
    assert _states(url, env)["featx-smoke/opt"]["state"] == "done"
    import featx

    assert featx.load("featx-smoke/opt", store=_store(url, seaweedfs), dataset="featx-sample",
                      subset="default").feats.shape[0] == 64


def _store(url, seaweedfs):
    from featx.store.s3 import S3Store

    os.environ.update(seaweedfs.env())
    return S3Store.from_url(url)


def test_process_killed_mid_run_leaves_model_not_done(seaweedfs, tmp_path):
    url = seaweedfs.url("killed")
    env = {**os.environ, **seaweedfs.env(), "FEATX_HOME": str(tmp_path)}
    cmd = [FEATX, "extract", "--models", "featx-smoke/llama", "featx-smoke/dinov2", *DATA, "--store", url,
           "--num_workers", "0", "--batch_size", "1", "--log_format", "json"]
    kill_mid_extraction(cmd, "featx-smoke/dinov2", env)
    r = run_featx("status", "--models", "featx-smoke/llama", "featx-smoke/dinov2", *DATA, "--store", url, "--json", env=env)
    assert [s["state"] for s in json.loads(r.out)] == ["done", "missing"]
    again = run_featx("extract", "--models", "featx-smoke/llama", "featx-smoke/dinov2", *DATA, "--store", url,
                      "--num_workers", "0", env=env)
    assert again.code == 0 and again.out.count("committed") == 1 and again.out.count("skipped") == 1


@pytest.mark.parametrize("case", ["wrong-credentials", "missing-bucket", "unreachable"])
def test_bad_store_settings_fail_fast_with_one_line(seaweedfs, tmp_path, case):
    env = {**seaweedfs.env(), "FEATX_HOME": str(tmp_path / "home")}
    url = seaweedfs.url("x")
    if case == "wrong-credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret"
    elif case == "missing-bucket":
        url = "s3://no-such-bucket-featx/x"
    else:
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard port: nothing listens
    r = subprocess.run([FEATX, "extract", "--models", "featx-smoke/gpt2", *DATA, "--store", url],
                       capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("featx: error:")]
    assert r.returncode == (1 if case == "unreachable" else 2) and len(errors) == 1, r.stderr  # 1: retried
    assert {"wrong-credentials": "access denied", "missing-bucket": "does not exist",
            "unreachable": "cannot reach"}[case] in errors[0]
    assert "wrong-secret" not in r.stderr and "Traceback" not in r.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts]
    assert leftovers == []


@pytest.mark.parametrize("copied", [("manifest.json",), ("pt", "manifest.json")], ids=["manifest", "data+manifest"])
def test_another_models_files_copied_in_are_corrupt_and_redone(committed, seaweedfs, copied):
    """A mis-synced bucket (``aws s3 sync`` with a rename): gpt2's objects under llama's keys are
    never llama's features: status says corrupt, extract redoes llama, load returns llama's."""
    import torch

    import featx

    url, env = committed
    client, prefix = seaweedfs.client(), "smoke-run/featx-sample/default/featx-smoke_"
    for ext in copied:
        client.copy_object(Bucket=seaweedfs.bucket, Key=f"{prefix}llama_pool-avg.{ext}",
                           CopySource={"Bucket": seaweedfs.bucket, "Key": f"{prefix}gpt2_pool-avg.{ext}"})
    row = _states(url, env)["featx-smoke/llama"]
    assert row["state"] == "corrupt" and "featx-smoke/gpt2" in row["reason"], row
    store = _store(url, seaweedfs)
    with pytest.raises(ValueError, match="copied or mis-synced"):
        featx.load("featx-smoke/llama", store=store, dataset="featx-sample")
    r = run_featx("extract", "--models", "featx-smoke/llama", *DATA, "--store", url, env=env)
    assert r.code == 0 and "committed" in r.out, r.err[-2000:]
    assert _states(url, env)["featx-smoke/llama"]["state"] == "done"
    llama = featx.load("featx-smoke/llama", store=store, dataset="featx-sample")
    gpt2 = featx.load("featx-smoke/gpt2", store=store, dataset="featx-sample")
    assert llama.manifest.model_id == "featx-smoke/llama" and not torch.equal(llama.feats, gpt2.feats)


def test_sharded_model_in_s3_commits_each_shard_and_reads_back_whole(seaweedfs, tmp_path):
    """`--shard_rows` to S3: one object and one manifest per shard under the model's stem, `done`
    with 4/4 shards, read back through the lazy view equal to the one-file run's bytes, and a rerun
    uploads nothing; a shard whose manifest goes is the only one the next run uploads."""
    import torch

    import featx

    env = {**seaweedfs.env(), "FEATX_HOME": str(tmp_path / "home")}
    gpt2 = ["--models", "featx-smoke/gpt2", *DATA, "--num_workers", "0", "--batch_size", "1"]
    whole, sharded = seaweedfs.url("whole"), seaweedfs.url("sharded")
    for url, extra in ((whole, []), (sharded, ["--shard_rows", "16"])):
        r = run_featx("extract", *gpt2, "--store", url, *extra, env=env)
        assert r.code == 0, r.err[-3000:]
    stem = "sharded/featx-sample/default/featx-smoke_gpt2_pool-avg/"
    keys = _keys(seaweedfs, stem)
    assert sorted(keys) == sorted(f"{stem}shard-0000{i}-of-00004.{ext}" for i in range(4) for ext in ("pt", "manifest.json"))
    r = run_featx("status", "--models", "featx-smoke/gpt2", *DATA, "--store", sharded, "--json", env=env)
    assert [(s["state"], s["shards"]) for s in json.loads(r.out)] == [("done", "4/4")], r.out + r.err
    view = featx.load("featx-smoke/gpt2", store=_store(sharded, seaweedfs), dataset="featx-sample")
    one = featx.load("featx-smoke/gpt2", store=_store(whole, seaweedfs), dataset="featx-sample")
    assert view.num_shards == 4 and torch.equal(view.feats, one.feats)
    seaweedfs.client().delete_object(Bucket=seaweedfs.bucket, Key=f"{stem}shard-00002-of-00004.manifest.json")
    r = run_featx("extract", *gpt2, "--store", sharded, "--shard_rows", "16", env=env)
    assert r.code == 0 and "3/4 shards already committed" in r.err, r.err[-3000:]
    after = _keys(seaweedfs, stem)
    assert {k: e for k, e in after.items() if "00002" not in k} == {k: e for k, e in keys.items() if "00002" not in k}
    assert torch.equal(featx.load("featx-smoke/gpt2", store=_store(sharded, seaweedfs), dataset="featx-sample").feats,
                       one.feats)
