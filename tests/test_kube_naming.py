"""Job names and label values: valid, short, deterministic, unique over every built-in model."""

from __future__ import annotations

import itertools

import pytest

from featx.catalog import builtin_modelsets, load_modelset
from featx.data.datasets import dataset_naming
from featx.catalog.spec import POOLS
from featx.kube.naming import DNS1123_LABEL, LABEL_VALUE, job_name, label_value
from featx.store.keys import ArtifactKey

ALL_SPECS = {s.id: s for name in builtin_modelsets() for s in load_modelset(name).models}
NASTY_IDS = [
    "a" * 200,
    "Org.With.Dots/Model_Name.v2--final__",
    "/abs/path/to/my_model.local",
    "./relative/model",
    "UPPER/CASE",
    "___",
    "x",
    "org/" + "very-long-model-name-" * 6,
    "org/" + "very-long-model-name-" * 6 + "b",  # same 63-char prefix as the previous one
]


def _stems(release="featx"):
    name, subset = dataset_naming("minhuh/prh", None)
    for spec in ALL_SPECS.values():
        for pool in POOLS[spec.modality]:
            yield spec.id, ArtifactKey(name, subset, spec.file_name, pool).stem
    for mid in NASTY_IDS:
        yield mid, ArtifactKey(name, subset, mid.replace("/", "_"), "avg").stem


@pytest.mark.parametrize("release", ["featx", "a-very-long-release-name-for-the-features-of-everything"])
def test_job_names_are_valid_unique_and_deterministic(release):
    names = set()
    stems = list(_stems(release))
    for (mid, stem), attempt in itertools.product(stems, (1, 2, 9, 20, 99)):
        name = job_name(release, stem, mid, attempt)
        assert len(name) <= 63, name
        assert DNS1123_LABEL.match(name), name
        assert name.endswith(f"-a{attempt}")
        assert name == job_name(release, stem, mid, attempt)
        names.add(name)
    assert len(names) == len(stems) * 5


def test_job_name_depends_on_release_and_pool():
    stem_avg = ArtifactKey("minhuh/prh", "wit_1024", "gpt2", "avg").stem
    stem_last = ArtifactKey("minhuh/prh", "wit_1024", "gpt2", "last").stem
    assert job_name("a", stem_avg, "gpt2", 1) != job_name("a", stem_last, "gpt2", 1)
    assert job_name("a", stem_avg, "gpt2", 1) != job_name("b", stem_avg, "gpt2", 1)
    assert "gpt2" in job_name("a", stem_avg, "gpt2", 1)


def test_long_ids_keep_the_model_name_not_the_org():
    mid = "some-organisation-with-a-long-name/pythia-160m"
    name = job_name("featx", "x/y/z", mid, 1)
    assert "pythia-160m" in name


@pytest.mark.parametrize("attempt", [0, 100, -1])
def test_attempt_out_of_range(attempt):
    with pytest.raises(ValueError):
        job_name("featx", "s", "m", attempt)


@pytest.mark.parametrize("text", sorted(ALL_SPECS) + NASTY_IDS + ["smoke", "inline", ""])
def test_label_values_are_valid(text):
    v = label_value(text)
    assert len(v) <= 63 and LABEL_VALUE.match(v), v


def test_label_values_of_distinct_long_ids_stay_distinct():
    a, b = NASTY_IDS[-2], NASTY_IDS[-1]
    assert label_value(a) != label_value(b)
    assert label_value("EleutherAI/pythia-160m") == "EleutherAI_pythia-160m"
    assert label_value("vit_base_patch16_224.augreg_in21k") == "vit_base_patch16_224.augreg_in21k"
