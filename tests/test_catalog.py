"""The catalog is data: these tests loop over it, so a new entry is checked without a test edit.

Expected modelsets are written out here (from shared/notes/modelsets.md) on purpose: the test must
not depend on files outside the repository.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import yaml

from featx.catalog import catalog, load_modelset
from featx.catalog.check import CheckResult, check_models
from featx.catalog.hub import HubAdapter, HubInfo
from featx.catalog.registry import MODELSETS_DIR, builtin_modelsets
from featx.catalog.spec import ModelSpec
from featx.errors import TransientError, UsageError

VAL_LANGUAGE = [
    "bigscience/bloomz-560m",
    "bigscience/bloomz-1b1",
    "bigscience/bloomz-1b7",
    "bigscience/bloomz-3b",
    "bigscience/bloomz-7b1",
    "openlm-research/open_llama_3b",
    "openlm-research/open_llama_7b",
    "openlm-research/open_llama_13b",
    "huggyllama/llama-7b",
    "huggyllama/llama-13b",
    "huggyllama/llama-30b",
    "huggyllama/llama-65b",
]
VAL_VISION = [
    "vit_tiny_patch16_224.augreg_in21k",
    "vit_small_patch16_224.augreg_in21k",
    "vit_base_patch16_224.augreg_in21k",
    "vit_large_patch16_224.augreg_in21k",
    "vit_base_patch16_224.mae",
    "vit_large_patch16_224.mae",
    "vit_huge_patch14_224.mae",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_large_patch14_dinov2.lvd142m",
    "vit_giant_patch14_dinov2.lvd142m",
    "vit_base_patch16_clip_224.laion2b",
    "vit_large_patch14_clip_224.laion2b",
    "vit_huge_patch14_clip_224.laion2b",
    "vit_base_patch16_clip_224.laion2b_ft_in12k",
    "vit_large_patch14_clip_224.laion2b_ft_in12k",
    "vit_huge_patch14_clip_224.laion2b_ft_in12k",
]
TEST_LANGUAGE = [
    "allenai/OLMo-1B-hf",
    "allenai/OLMo-7B-hf",
    "google/gemma-2b",
    "google/gemma-7b",
    "mistralai/Mistral-7B-v0.1",
    "mistralai/Mixtral-8x7B-v0.1",
    "NousResearch/Meta-Llama-3-8B",
    "NousResearch/Meta-Llama-3-70B",
]
CUSTOM = ["bigscience/bloomz-560m", "bigscience/bloomz-1b1", "vit_giant_patch14_dinov2.lvd142m"]

EXPECTED = {
    "val": VAL_LANGUAGE + VAL_VISION,
    "test": TEST_LANGUAGE,
    "custom": CUSTOM,
}

FORK_LANGUAGE = """
bigscience/bloom-560m bigscience/bloom-1b1 bigscience/bloom-1b7 bigscience/bloom-3b bigscience/bloom-7b1
bigscience/bloomz-560m bigscience/bloomz-1b1 bigscience/bloomz-1b7 bigscience/bloomz-3b bigscience/bloomz-7b1
huggyllama/llama-7b huggyllama/llama-13b huggyllama/llama-30b huggyllama/llama-65b
NousResearch/Meta-Llama-3-8B NousResearch/Meta-Llama-3-70B
meta-llama/Llama-2-7b-hf meta-llama/Llama-2-13b-hf meta-llama/Llama-2-70b-hf
openlm-research/open_llama_3b openlm-research/open_llama_7b openlm-research/open_llama_13b
allenai/OLMo-1B-hf allenai/OLMo-7B-hf google/gemma-2b google/gemma-7b google/gemma-2b-it google/gemma-7b-it
mistralai/Mistral-7B-v0.1 mistralai/Mistral-7B-v0.3 mistralai/Mixtral-8x7B-v0.1
gpt2 gpt2-medium gpt2-large gpt2-xl
EleutherAI/gpt-neo-125M EleutherAI/gpt-neo-1.3B EleutherAI/gpt-neo-2.7B EleutherAI/gpt-j-6B
EleutherAI/pythia-70m EleutherAI/pythia-160m EleutherAI/pythia-410m EleutherAI/pythia-1b EleutherAI/pythia-1.4b
EleutherAI/pythia-2.8b EleutherAI/pythia-6.9b EleutherAI/pythia-12b
Salesforce/codegen-350M-mono Salesforce/codegen-2B-mono Salesforce/codegen-6B-mono Salesforce/codegen-16B-mono
tiiuae/falcon-7b tiiuae/falcon-40b mosaicml/mpt-7b mosaicml/mpt-30b
microsoft/DialoGPT-medium microsoft/DialoGPT-large
facebook/opt-125m facebook/opt-350m facebook/opt-1.3b facebook/opt-2.7b facebook/opt-6.7b facebook/opt-13b
facebook/opt-30b facebook/opt-66b
""".split()
FORK_VISION = """
vit_tiny_patch16_224.augreg_in21k vit_small_patch16_224.augreg_in21k vit_base_patch16_224.augreg_in21k
vit_large_patch16_224.augreg_in21k vit_huge_patch14_224.orig_in21k
vit_base_patch16_224.mae vit_large_patch16_224.mae vit_huge_patch14_224.mae
vit_small_patch14_dinov2.lvd142m vit_base_patch14_dinov2.lvd142m vit_large_patch14_dinov2.lvd142m
vit_giant_patch14_dinov2.lvd142m
vit_base_patch16_clip_224.laion2b vit_large_patch14_clip_224.laion2b vit_huge_patch14_clip_224.laion2b
vit_base_patch16_clip_224.laion2b_ft_in12k vit_large_patch14_clip_224.laion2b_ft_in12k
vit_huge_patch14_clip_224.laion2b_ft_in12k
vit_base_patch16_clip_224.openai vit_large_patch14_clip_224.openai
vit_base_patch32_224.augreg_in21k vit_large_patch32_224.orig_in21k vit_base_patch8_224.augreg_in21k
vit_base_patch16_384.augreg_in21k vit_large_patch16_384.augreg_in21k
deit_tiny_patch16_224.fb_in1k deit_small_patch16_224.fb_in1k deit_base_patch16_224.fb_in1k
deit3_small_patch16_224.fb_in1k deit3_base_patch16_224.fb_in1k deit3_large_patch16_224.fb_in1k
vit_small_patch16_224.dino vit_base_patch16_224.dino vit_base_patch8_224.dino
""".split()
FORK_INVALID = {"vit_base_patch16_384.augreg_in21k", "vit_large_patch16_384.augreg_in21k"}

CATALOG = catalog()
# Real published models; random-init entries (the smoke models) are built from their own config.
REAL = {i: s for i, s in CATALOG.items() if s.init == "pretrained"}
LANGUAGE = sorted(i for i, s in REAL.items() if s.modality == "language")
VISION = sorted(i for i, s in REAL.items() if s.modality == "vision")
# Orgs whose repos the hub gates behind a license (as of the catalog's writing).
GATED_PREFIXES = ("meta-llama/", "google/gemma", "mistralai/")


def _ids(name: str) -> list[str]:
    return [m.id for m in load_modelset(name).models]


def _raw_ids(name: str) -> list[str]:
    doc = yaml.safe_load((MODELSETS_DIR / f"{name}.yaml").read_text())
    return [e if isinstance(e, str) else e["id"] for e in doc["models"]]


# --- modelsets -------------------------------------------------------------------------------


def test_fork_lists_as_documented():
    assert len(FORK_LANGUAGE) == 65 and len(FORK_VISION) == 34


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_modelsets_exact(name):
    assert _ids(name) == EXPECTED[name]


def test_custom_is_two_language_one_vision():
    ms = load_modelset("custom")
    assert [len(ms.select("language")), len(ms.select("vision"))] == [2, 1]


@pytest.mark.parametrize("name", ["val", "test", "custom", "exhaustive"])
def test_builtin_modelsets_exist_with_description(name):
    assert name in builtin_modelsets()
    ms = load_modelset(name)
    assert ms.name == name
    assert ms.description.strip()


@pytest.mark.parametrize("name", builtin_modelsets())
def test_modelset_ids_are_catalog_entries_without_duplicates(name):
    ids = _raw_ids(name)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert [i for i in ids if i not in CATALOG] == []


def test_exhaustive_reaches_the_promised_size():
    ms = load_modelset("exhaustive")
    assert len(ms.select("language")) >= 70
    assert len(ms.select("vision")) >= 30


def test_exhaustive_2024_is_the_list_before_issue_14_and_inside_exhaustive():
    old, new = _ids("exhaustive-2024"), _ids("exhaustive")
    assert (len(load_modelset("exhaustive-2024").select("language")), len(load_modelset("exhaustive-2024").select("vision"))) == (83, 56)
    assert set(old) < set(new) and [i for i in new if i in set(old)] == old


ISSUE_14_FAMILIES = {"qwen2", "qwen2_5", "qwen3", "phi2", "phi3", "gemma2", "gemma3", "llama3_1", "llama3_2", "smollm2",
                     "siglip", "siglip2", "eva_clip", "resnet", "convnext", "efficientnet", "regnet", "swin"}


def test_exhaustive_holds_the_issue_14_families_and_smoke_covers_their_architectures():
    families = {m.family for m in load_modelset("exhaustive").models}
    assert ISSUE_14_FAMILIES <= families
    smoke = load_modelset("smoke").models
    archs = {m.arch for m in smoke if m.modality == "language"}
    assert {"qwen2", "qwen3", "phi", "phi3", "gemma2", "gemma3_text", "llama"} <= archs
    assert any((m.config.get("rope_scaling") or {}).get("rope_type") == "llama3" for m in smoke)
    timm_archs = {m.load_id.split(".")[0].split("_")[0] for m in smoke if m.modality == "vision"}
    assert {"resnet50", "convnext", "test", "regnety", "swin", "eva02"} <= timm_archs
    assert {m.family for m in smoke} >= {"siglip", "siglip2", "efficientnet", "smollm2"}


def test_exhaustive_language_first_then_vision():
    modalities = [m.modality for m in load_modelset("exhaustive").models]
    assert modalities == sorted(modalities)  # "language" < "vision"


def test_exhaustive_contains_the_valid_fork_list():
    ids = set(_ids("exhaustive"))
    valid = [i for i in FORK_LANGUAGE + FORK_VISION if i not in FORK_INVALID]
    assert [i for i in valid if i not in ids] == []
    assert not FORK_INVALID & ids


def test_every_real_catalog_entry_is_in_exhaustive():
    assert sorted(set(REAL) - set(_ids("exhaustive"))) == []


def test_reference_and_exhaustive_sets_hold_only_real_models():
    for name in [*EXPECTED, "exhaustive"]:
        assert [i for i in _ids(name) if i not in REAL] == [], name


def test_reference_sets_are_inside_exhaustive():
    ex = set(_ids("exhaustive"))
    for name in EXPECTED:
        assert set(_ids(name)) <= ex, name


# --- vision entries ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_pretrained():
    timm = pytest.importorskip("timm")
    return set(timm.list_pretrained())


@pytest.mark.parametrize("model_id", VISION)
def test_vision_id_is_a_timm_pretrained_name(model_id, timm_pretrained):
    assert model_id in timm_pretrained
    spec = CATALOG[model_id]
    assert spec.arch == model_id.split(".")[0]
    assert spec.family and spec.vocab is None and not spec.gated


@pytest.mark.parametrize("model_id", VISION)
def test_vision_facts_match_the_timm_model(model_id):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        model = timm.create_model(model_id, pretrained=False)
    n = sum(p.numel() for p in model.parameters())
    spec = CATALOG[model_id]
    assert abs(spec.params - n) <= 0.05 * n, f"{model_id}: catalog {spec.params:,} vs timm {n:,}"
    assert spec.class_token == (getattr(model, "cls_token", None) is not None)
    if hasattr(model, "num_prefix_tokens"):  # ViT family: one width through its blocks
        assert spec.layers == len(model.blocks)
        assert spec.hidden == model.embed_dim and spec.image_tokens is None
    else:  # convnets, Swin: one pooled layer per feature level
        from featx.extract.vision import image_tokens

        assert spec.layers == len(model.feature_info)
        assert spec.hidden == model.num_features and spec.image_tokens == image_tokens(model)


# --- language entries -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_mapping():
    pytest.importorskip("transformers")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING


@pytest.mark.parametrize("model_id", LANGUAGE)
def test_language_entry_complete(model_id, config_mapping):
    spec = CATALOG[model_id]
    assert re.fullmatch(r"[a-z0-9_]+", spec.family)
    assert spec.arch in config_mapping, f"{model_id}: arch {spec.arch!r} unknown to transformers"
    for field in ("params", "layers", "hidden", "vocab"):
        value = getattr(spec, field)
        assert isinstance(value, int) and value > 0, f"{model_id}: {field}={value!r}"
    assert spec.trust_remote_code is False  # every architecture here is native in transformers
    assert spec.pad_token in (None, "eos")
    assert re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id)


@pytest.mark.parametrize("model_id", LANGUAGE)
def test_language_params_consistent_with_shape(model_id):
    """A rough count catches typos (a missing digit), not exact figures.

    Per layer about 4·h² attention + 8·h² MLP (times E experts for 'NxMB' mixtures), plus one
    embedding matrix. Wide gated MLPs (Gemma-7B: 8·h intermediate) land near 2.2×: bounds 0.5–2.5.
    """
    spec = CATALOG[model_id]
    m = re.search(r"(\d+)x\d+B", model_id)
    experts = int(m.group(1)) if m else 1
    estimate = (4 + 8 * experts) * spec.layers * spec.hidden**2 + spec.vocab * spec.hidden
    ratio = spec.params / estimate
    assert 0.5 <= ratio <= 2.5, f"{model_id}: params {spec.params:,} vs estimate {estimate:,}"


def test_gated_orgs_and_only_they_are_marked_gated():
    by_org = {m for m in LANGUAGE if m.startswith(GATED_PREFIXES)}
    assert by_org, "no model of a gated org in the catalog: the check below would check nothing"
    assert {m for m in LANGUAGE if CATALOG[m].gated} == by_org
    assert [m for m in by_org if "HF_TOKEN" not in CATALOG[m].notes] == []


def test_catalog_imports_without_torch():
    code = (
        "import sys, featx.catalog, featx.catalog.check, featx.catalog.hub; "
        "featx.catalog.catalog(); "
        "bad = [m for m in ('torch', 'transformers', 'timm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- check_models -----------------------------------------------------------------------------


class FakeHub:
    """Answers from a table; records the calls."""

    def __init__(self, table, error=None):
        self.table = table
        self.error = error
        self.calls = []

    def model_info(self, repo_id, revision, token):
        self.calls.append((repo_id, revision, token))
        if self.error is not None:
            raise self.error
        return self.table.get(repo_id, (False, False, None))


LM = ModelSpec(id="org/lm", modality="language", family="llama", arch="llama")
GATED_LM = ModelSpec(id="org/gated", modality="language", family="llama", arch="llama", gated=True)
ODD_LM = ModelSpec(id="org/odd", modality="language", family="x", arch="not_a_model_type")
REMOTE_LM = ModelSpec(id="org/remote", modality="language", family="x", arch="not_a_model_type",
                      trust_remote_code=True)
VIT = ModelSpec(id="vit_base_patch16_224.augreg_in21k", modality="vision", family="vit",
                arch="vit_base_patch16_224")
VIT_BAD_TAG = ModelSpec(id="vit_base_patch16_384.augreg_in21k", modality="vision", family="vit")
VIT_BAD_ARCH = ModelSpec(id="vit_nonexistent_patch99.foo", modality="vision", family="vit")

TABLE = {
    "org/lm": (True, False, "llama"),
    "org/gated": (True, True, "llama"),
    "org/odd": (True, False, "not_a_model_type"),
    "org/remote": (True, False, "not_a_model_type"),
    "org/renamed": (True, False, "mistral"),
    "timm/vit_base_patch16_224.augreg_in21k": (True, False, None),
}

CASES = [
    # (name, spec, token, table override, ok, gated, reason contains, fix contains)
    ("exists", LM, None, {}, True, False, "ok", ""),
    ("missing", ModelSpec(id="org/nope", modality="language", family="x", arch="llama"), None, {},
     False, False, "not found", "check the id"),
    ("gated-no-token", GATED_LM, None, {}, False, True, "gated", "HF_TOKEN"),
    ("gated-with-token", GATED_LM, "hf_xxx", {}, True, True, "token is set", ""),
    ("unsupported", ODD_LM, None, {}, False, False, "not supported", "trust_remote_code"),
    ("remote-code", REMOTE_LM, None, {}, True, False, "trust_remote_code", ""),
    ("arch-mismatch", ModelSpec(id="org/renamed", modality="language", family="x", arch="llama"), None, {},
     True, False, "hub config says 'mistral'", "arch: mistral"),
    ("no-model-type", LM, None, {"org/lm": (True, False, None)}, True, False, "catalog's arch", ""),
    ("vision-ok", VIT, None, {}, True, False, "ok", ""),
    ("vision-bad-tag", VIT_BAD_TAG, None, {}, False, False, "no pretrained weights",
     "vit_base_patch16_384.augreg_in21k_ft_in1k"),
    ("vision-bad-arch", VIT_BAD_ARCH, None, {}, False, False, "no architecture", "timm.list_models"),
    ("vision-weights-missing", VIT, None, {"timm/vit_base_patch16_224.augreg_in21k": (False, False, None)},
     False, False, "not found", "upgrade timm"),
    ("vision-gated-no-token", VIT, None, {"timm/vit_base_patch16_224.augreg_in21k": (True, True, None)},
     False, True, "gated", "HF_TOKEN"),
]


@pytest.mark.parametrize(
    "spec,token,override,ok,gated,reason,fix",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_check_models_table(spec, token, override, ok, gated, reason, fix):
    if spec.modality == "vision":
        pytest.importorskip("timm")
    else:
        pytest.importorskip("transformers")
    hub = FakeHub({**TABLE, **override})
    [result] = check_models([spec], hub, token=token)
    assert isinstance(result, CheckResult)
    assert (result.id, result.ok, result.gated) == (spec.id, ok, gated), result
    assert reason in result.reason, result
    assert fix in result.fix, result
    if not ok:
        assert result.fix, "a failing check must say how to fix it"


def test_check_models_passes_token_and_revision_and_caches():
    pytest.importorskip("transformers")
    hub = FakeHub(TABLE)
    spec = ModelSpec(id="org/lm", modality="language", family="llama", arch="llama", revision="abc")
    results = check_models([spec, spec], hub, token="tok")
    assert [r.ok for r in results] == [True, True]
    assert hub.calls == [("org/lm", "abc", "tok")]


def test_check_models_default_token_from_env(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    hub = FakeHub(TABLE)
    [result] = check_models([GATED_LM], hub)
    assert result.ok and result.gated
    assert hub.calls[0][2] == "from-env"


def test_check_models_random_init_smoke_entries_need_no_hub():
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    smoke = [s for s in CATALOG.values() if s.init == "random"]
    if not smoke:
        pytest.skip("no random-init entries in the catalog")
    hub = FakeHub({})
    results = check_models(smoke, hub, token=None)
    assert [r for r in results if not r.ok] == []
    assert hub.calls == []


def test_check_models_local_directory(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    hub = FakeHub({})
    [result] = check_models([ModelSpec(id=str(tmp_path), modality="language", family="local")], hub, token=None)
    assert result.ok and "local" in result.reason
    assert hub.calls == []


@pytest.mark.parametrize(
    "error", [TransientError("hub down; check HF_ENDPOINT"), ConnectionError("no route"), TimeoutError("slow")]
)
def test_check_models_unreachable_hub_is_transient(error):
    with pytest.raises(TransientError) as info:
        check_models([LM], FakeHub(TABLE, error=error), token=None)
    message = str(info.value)
    assert "\n" not in message and "HF_ENDPOINT" in message


# --- HubAdapter over a fake HfApi (no network) -------------------------------------------------


class FakeApi:
    def __init__(self, outcome):
        self.outcome = outcome
        self.kwargs = None

    def model_info(self, repo_id, **kwargs):
        self.kwargs = kwargs
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _http_error(cls, status):
    httpx = pytest.importorskip("httpx2")
    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
    return cls(f"{status}", response=response)


def _adapter_cases():
    errors = pytest.importorskip("huggingface_hub.errors")
    httpx = pytest.importorskip("httpx2")
    return [
        ("found", SimpleNamespace(config={"model_type": "llama"}, gated=False), HubInfo(True, False, "llama")),
        ("found-gated", SimpleNamespace(config={"model_type": "gemma"}, gated="manual"), HubInfo(True, True, "gemma")),
        ("no-config", SimpleNamespace(config=None, gated=False), HubInfo(True, False, None)),
        ("missing", _http_error(errors.RepositoryNotFoundError, 401), HubInfo(False, False, None)),
        ("bad-revision", _http_error(errors.RevisionNotFoundError, 404), HubInfo(False, False, None)),
        ("gated-error", _http_error(errors.GatedRepoError, 403), HubInfo(True, True, None)),
        ("server-error", _http_error(errors.HfHubHTTPError, 503), TransientError),
        ("rate-limited", _http_error(errors.HfHubHTTPError, 429), TransientError),
        ("bad-token", _http_error(errors.HfHubHTTPError, 401), UsageError),
        ("dns", httpx.ConnectError("Name or service not known"), TransientError),
        ("timeout", httpx.ReadTimeout("timed out"), TransientError),
        ("offline", errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"), TransientError),
    ]


def test_hub_adapter_translates_hub_answers():
    for name, outcome, expected in _adapter_cases():
        api = FakeApi(outcome)
        adapter = HubAdapter(endpoint="https://hub.example", api=api)
        if isinstance(expected, type):
            with pytest.raises(expected) as info:
                adapter.model_info("org/x", "rev", "tok")
            assert "\n" not in str(info.value), name
            if expected is TransientError:
                assert "https://hub.example" in str(info.value) and "HF_ENDPOINT" in str(info.value), name
        else:
            assert adapter.model_info("org/x", "rev", "tok") == expected, name
            assert api.kwargs["revision"] == "rev" and api.kwargs["token"] == "tok", name


def test_check_models_knows_the_issue_14_families():
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    specs = [s for s in REAL.values() if s.family in ISSUE_14_FAMILIES]

    class EveryRepo(FakeHub):  # the hub as the catalog describes it (model_type = arch, gate as recorded)
        def model_info(self, repo_id, revision, token):
            spec = CATALOG.get(repo_id)
            return (True, spec.gated, spec.arch) if spec else (True, False, None)

    results = {r.id: r for r in check_models(specs, EveryRepo({}), token="hf_x")}
    assert [r for r in results.values() if not r.ok or r.fix] == []
    image_text = {i for i, r in results.items() if "language model only" in r.reason}
    assert image_text == {"google/gemma-3-4b-pt", "google/gemma-3-12b-pt", "google/gemma-3-27b-pt"}
    anonymous = check_models([CATALOG["meta-llama/Llama-3.2-1B"], CATALOG["Qwen/Qwen3-0.6B-Base"]], EveryRepo({}), token=None)
    assert [(r.ok, r.gated) for r in anonymous] == [(False, True), (True, False)]


def test_models_cli_shows_each_models_default_pool():
    import json

    from tests.helpers import run_cli

    r = run_cli("models", "--modelset", "smoke", "--json")
    pools = {m["id"]: m["default_pool"] for m in json.loads(r.out)}
    assert r.code == 0 and pools["featx-smoke/gpt2"] == "avg" and pools["featx-smoke/vit"] == "cls"
    assert pools["featx-smoke/resnet"] == pools["featx-smoke/swin"] == pools["featx-smoke/siglip"] == "avg"
    text = run_cli("models", "--modelset", "smoke").out.splitlines()
    assert [line.split()[0] for line in text if line.endswith("no class token: pool avg")] == [
        i for i, p in pools.items() if p == "avg" and CATALOG[i].modality == "vision"]
