"""A sharded model as one Indexed Job (no cluster; the API server's own checks of the manifest are
in tests/integration/test_reconcile_cluster.py): its rendering, the index -> shard mapping through
featx extract's real flag parser, decide() per shard, an Indexed Job's pods read by their worst
failure, and how the controller learns the row count."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest

from featx.cli.main import build_parser
from featx.data.sample import SAMPLE_ROWS, build_sample
from featx.errors import UsageError
from featx.kube.config import RunConfig, Sharding
from featx.kube.helm import render_run_config
from featx.kube.jobs import render_job
from featx.kube.observe import observe
from featx.kube.reconcile import Create, GiveUp, Settings, decide
from featx.kube.rowcount import count_rows, rows_in_card
from featx.pipeline.request import RunRequest
from featx.pipeline.shards import ShardLayout, format_indices, parse_indices
from featx.plan.sizing import choose
from featx.store.records import Manifest, StoredState
from tests.test_kube_reconcile import A, B, CLASSES, job, job_manifest, pod, short

pytestmark = pytest.mark.usefixtures("helm")

LAYOUT = ShardLayout(num_rows=10, num_shards=4)  # rows 0-3, 3-6, 6-8, 8-10
SA, SB = replace(A, layout=LAYOUT), replace(B, layout=LAYOUT)


def shard(d, i: int, layout: ShardLayout = LAYOUT, **other) -> tuple[str, StoredState]:
    """Shard ``i`` of ``d`` committed (with ``other`` fields of its identity changed: stale)."""
    key = d.key.shard(i, layout.num_shards)
    start, end = layout.bounds(i)
    identity = {**asdict(replace(d.identity, data_key=key.data)), "rows_fingerprint": "f" * 64,
                "num_rows": end - start, "num_shards": layout.num_shards, "row_start": start, "row_end": end, **other}
    return key.stem, StoredState("done", Manifest(**identity, modality="language", sha256="0" * 64, size=1,
                                                  shape=[end - start, 13, 768], dtype="bfloat16", featx_version="t"))


def committed(d, *indices: int, **other) -> dict[str, StoredState]:
    return dict(shard(d, i, **other) for i in indices)


def config(*sets: str) -> RunConfig:
    return RunConfig.from_dict(render_run_config(sets=["modelset={gpt2}", "dataset=featx-sample", *sets]))


# -- rendering --------------------------------------------------------------------------------


def test_a_sharded_model_renders_one_indexed_job_whose_pods_each_run_one_missing_shard():
    cfg = config("numSamples=10", "sharding.rowsPerShard=3", "sharding.parallelism=2")
    (d,) = cfg.desired(10)
    assert d.layout == ShardLayout(10, 4)
    todo = (1, 2, 3)
    manifest = render_job(cfg, d, choose(d.spec, cfg.classes), 1, todo)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    assert spec["backoffLimitPerIndex"] == 1 and spec["maxFailedIndexes"] == 3 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailIndex", "onExitCodes": {"containerName": "extract", "operator": "In", "values": [2, 3, 4]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
    args = spec["template"]["spec"]["containers"][0]["args"]
    # each pod: the Job controller's index in $(JOB_COMPLETION_INDEX), parsed by featx extract's own parser
    ran = []
    for k in range(spec["completions"]):
        ns = build_parser().parse_args(["extract", *(a.replace("$(JOB_COMPLETION_INDEX)", str(k)) for a in args)])
        request = RunRequest.from_args(ns)
        assert request.num_shards == 4
        ran += request.wanted_shards(4)
    assert ran == list(todo)  # every missing shard once, none committed


def test_parallelism_is_at_most_the_shards_to_run():
    cfg = config("numSamples=10", "sharding.rowsPerShard=3", "sharding.parallelism=8")
    (d,) = cfg.desired(10)
    assert render_job(cfg, d, choose(d.spec, cfg.classes), 2, (3,))["spec"]["parallelism"] == 1


def test_unknown_row_count_renders_one_job_that_runs_every_shard_in_turn():
    cfg = config("sharding.rowsPerShard=3")
    (d,) = cfg.desired(None)
    spec = render_job(cfg, d, choose(d.spec, cfg.classes), 1)["spec"]
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "completionMode" not in spec and spec["backoffLimit"] == 0
    assert args[args.index("--shard_rows") + 1] == "3" and "--num_shards" not in args
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"


def test_sharding_off_renders_the_job_as_before():
    cfg = config("numSamples=10")
    assert cfg.sharding == Sharding() and cfg.sharding.rows_per_shard is None
    (d,) = cfg.desired(10)
    assert d.layout is None
    spec = render_job(cfg, d, choose(d.spec, cfg.classes), 1)["spec"]
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert "completionMode" not in spec and not {"--shard_rows", "--num_shards", "--shard_indices"} & set(args)


def test_rows_per_shard_lays_out_the_shards_extract_would():
    cfg = config("sharding.rowsPerShard=5")
    for rows in (3, 5, 6, 1001):
        assert cfg.desired(rows)[0].layout == RunRequest(shard_rows=5).layout(rows)
    assert cfg.desired(3)[0].layout == ShardLayout(3, 1)  # fewer rows than a shard: one shard file


def test_more_shards_than_an_indexed_job_holds_is_refused_before_any_job():
    cfg = config("sharding.rowsPerShard=10")
    assert cfg.desired(1_000_000)[0].layout.num_shards == 100_000
    with pytest.raises(UsageError, match="at most 100000: raise rowsPerShard"):
        cfg.desired(1_000_001)


def test_job_extra_args_may_not_set_the_shard_layout():
    with pytest.raises(UsageError, match="sharding.rowsPerShard"):
        RunRequest.from_run_config({"dataset": "featx-sample"}, ["--num_shards", "4"])


# -- the index -> shard flags -----------------------------------------------------------------


@pytest.mark.parametrize("indices", [(0,), (3, 7, 9), (0, 1, 2, 5, 6, 9), tuple(range(100)), (9, 2, 4)])
def test_shard_indices_round_trip(indices):
    assert parse_indices(format_indices(indices)) == indices


@pytest.mark.parametrize("kwargs,message", [
    (dict(shard_indices=(1,)), "needs --num_shards"),
    (dict(num_shards=4, shard_index=1, shard_indices=(2,)), "no --shard_index"),
    (dict(num_shards=4, shard_indices=(1, 4)), "shard 4 is not one of 0..3"),
    (dict(num_shards=4, shard_indices=(1, 2), completion_index=2), "give 0..1"),
    (dict(num_shards=4, completion_index=0), "needs --shard_indices"),
])
def test_bad_shard_selections_are_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        RunRequest(**kwargs)


@pytest.mark.parametrize("text", ["", "3,3", "0-2,1", "5-2", "a", "-1", "1,,2"])
def test_bad_shard_index_lists_are_refused(text):
    with pytest.raises(UsageError):
        parse_indices(text)


# -- decide, per shard ------------------------------------------------------------------------


def settings(**kw) -> Settings:
    return Settings(classes=CLASSES, **kw)


def test_first_attempt_runs_only_the_shards_not_committed():
    (create,) = decide([SA], committed(SA, 0, 2), [], settings())
    assert isinstance(create, Create) and create.shards == (1, 3) and create.attempt == 1
    assert "shards 1,3 of 4" in create.why


def test_every_shard_committed_is_done_and_no_job_is_made():
    assert [short(a) for a in decide([SA], committed(SA, 0, 1, 2, 3), [], settings())] == [("skip", SA.id, "done")]


def test_a_stale_shard_is_run_again():
    stale = committed(SA, 1, num_samples=99)
    (create,) = decide([SA], {**stale, **committed(SA, 3)}, [], settings())
    assert create.shards == (0, 1, 2)


def test_shards_committed_in_another_layout_are_continued_not_redone():
    """rowsPerShard changed after 2 of 5 shards were committed: the rest of those 5 are run (one
    layout, so the model stays loadable), not 4 new ones beside them."""
    held = ShardLayout(10, 5)
    (create,) = decide([SA], committed(SA, 0, 3, layout=held), [], settings())
    assert create.shards == (1, 2, 4) and "of 5" in create.why
    assert [short(a) for a in decide([SA], committed(SA, *range(5), layout=held), [], settings())] == \
        [("skip", SA.id, "done")]
    rendered = Settings(classes=CLASSES, render=lambda d, s, n, shards: {"metadata": {"name": "j"}, "layout": d.layout})
    (create,) = decide([SA], committed(SA, 0, 3, layout=held), [], rendered)
    assert create.job["layout"] == held  # the Job's --num_shards is the held layout's


def test_shards_of_two_layouts_leave_the_configured_one():
    mixed = {**committed(SA, 0, layout=ShardLayout(10, 5)), **committed(SA, 1, layout=ShardLayout(10, 2))}
    (create,) = decide([SA], mixed, [], settings())
    assert create.shards == (0, 1, 2, 3)


def test_out_of_memory_moves_only_the_remaining_shards_up_a_class():
    failed = job(SA, 1, code=4, reason="FailedIndexes")
    (create,) = decide([SA], committed(SA, 0, 3), [failed], settings())
    assert short(create) == ("create", SA.id, 2, "a100-40gb", 1) and create.shards == (1, 2)
    assert create.cause == "oom"


def test_a_transient_failure_retries_the_remaining_shards_on_the_same_class():
    (create,) = decide([SA], committed(SA, 1), [job(SA, 1, code=1, reason="FailedIndexes")], settings())
    assert short(create) == ("create", SA.id, 2, "l4-24gb", 1) and create.shards == (0, 2, 3)


def test_a_job_that_completed_with_a_shard_missing_retries_that_shard():
    (create,) = decide([SA], committed(SA, 0, 1, 2), [job(SA, 1, "succeeded")], settings())
    assert create.attempt == 2 and create.shards == (3,)


def test_a_permanent_failure_gives_up_the_model():
    (give_up,) = decide([SA], committed(SA, 0), [job(SA, 1, code=3, reason="FailedIndexes")], settings())
    assert isinstance(give_up, GiveUp) and "cannot succeed on retry" in give_up.reason


def test_a_running_indexed_job_is_left_alone_and_counts_once_against_concurrency():
    actions = decide([SA, SB], {}, [job(SA, 1, "running")], settings(concurrency=2))
    assert [short(a) for a in actions] == [("skip", SA.id, "running"), ("create", SB.id, 1, "l4-24gb", 1)]


def test_a_given_up_model_with_some_shards_committed_stays_given_up():
    """The controller's permanent record beside committed shards is read: the model is not retried."""
    from featx.store import FailureRecord

    gave_up = FailureRecord(SA.id, "gave up after 3 attempt(s)", "permanent", 3)
    states = {**committed(SA, 0), SA.stem: StoredState("failed", failure=gave_up)}
    kept = replace(job(SA, 3, code=1), kept=True)
    (again,) = decide([SA], states, [job(SA, 1, code=1), job(SA, 2, code=1), kept], settings())
    assert isinstance(again, GiveUp) and not again.record
    assert [short(a) for a in decide([SA], states, [], settings())] == [("skip", SA.id, "failed")]


# -- an Indexed Job's pods --------------------------------------------------------------------


@pytest.mark.parametrize("pods,code", [
    ([(0, "Completed", "T3"), (4, "Error", "T1")], 4),  # a later success does not hide the OOM
    ([(4, "Error", "T3"), (3, "Error", "T1")], 3),  # permanent outranks out of memory
    ([(1, "Error", "T1"), (137, "OOMKilled", "T0")], 137),
    ([(1, "Error", "T1"), (143, "Error", "T2")], 143),  # else the newest
])
def test_an_indexed_job_is_judged_by_its_worst_pod(pods, code):
    cond = {"type": "Failed", "status": "True", "reason": "FailedIndexes"}
    jobs = [job_manifest("j", A, 1, [cond])]
    (o,) = observe(jobs, [pod("j", c, r, f"2026-01-01T00:00:0{t[1]}Z") for c, r, t in pods])
    assert o.exit_code == code


# -- the row count ----------------------------------------------------------------------------


CARD = {"dataset_info": {"features": [{"name": "image", "dtype": "image"}],
                         "splits": [{"name": "train", "num_bytes": 1, "num_examples": 1024}]}}


@pytest.mark.parametrize("card,rows", [
    (CARD, 1024),
    ({"dataset_info": [{"config_name": "default", **CARD["dataset_info"]},
                       {"config_name": "other", "splits": [{"name": "train", "num_examples": 5}]}]}, 1024),
    ({"dataset_info": [{"config_name": "a", "splits": [{"name": "train", "num_examples": 7}]}]}, 7),
    ({"dataset_info": [{"config_name": "a"}, {"config_name": "b"}]}, None),  # which one: unknown
    ({"dataset_info": {"splits": [{"name": "test", "num_examples": 7}]}}, None),
    ({"license": "mit"}, None),
])
def test_rows_in_a_hub_card(card, rows):
    assert rows_in_card(card) == rows


def test_the_row_count_comes_from_num_samples_without_any_lookup():
    def no_hub(repo, revision):
        raise AssertionError("numSamples must answer alone")

    assert count_rows(RunRequest("minhuh/prh", num_samples=512), no_hub).rows == 512


def test_the_row_count_of_a_hub_data_set_comes_from_its_card_at_the_runs_revision():
    asked = []

    def card(repo, revision):
        asked.append((repo, revision))
        return CARD

    assert count_rows(RunRequest("prh"), card).rows == 1024 and asked == [("minhuh/prh", "wit_1024")]


def test_an_unreachable_hub_leaves_the_row_count_unknown_with_the_reason():
    def offline(repo, revision):
        raise ConnectionError("no network")

    count = count_rows(RunRequest("minhuh/prh"), offline)
    assert count.rows is None and "ConnectionError" in count.source


def test_the_row_count_of_local_data_sets_is_their_own(tmp_path):
    import datasets

    folder = build_sample(tmp_path / "folder", rows=6)
    assert count_rows(RunRequest(str(folder))).rows == 6
    assert count_rows(RunRequest("featx-sample")).rows == SAMPLE_ROWS
    table = datasets.Dataset.from_dict({"image": [str(folder / f"images/{i:04d}.png") for i in range(6)] * 2,
                                        "text": [["a caption"]] * 12}).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    assert count_rows(RunRequest(str(tmp_path / "saved"))).rows == 12
    missing = count_rows(RunRequest(str(tmp_path / "only-the-jobs-mount-it")))
    assert missing.rows is None and "cannot be read here" in missing.source


def test_the_controllers_metrics_count_a_sharded_model_as_featx_status_does():
    from featx.kube.metrics import model_states

    assert model_states([SA], committed(SA, 0, 1, 2, 3), [])["done"] == 1
    assert model_states([SA], committed(SA, 0, 1, 2), [])["missing"] == 1
    assert model_states([SA], committed(SA, *range(5), layout=ShardLayout(10, 5)), [])["done"] == 1
