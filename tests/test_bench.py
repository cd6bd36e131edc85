"""The benchmark harness on smoke-size models: correctness only, never timing.

- the reference re-implementation agrees with featx for a rotary model (left padding does not
  change rotary models, so both must give the same features);
- for GPT-2 (absolute positions) the reference's left padding without ``position_ids`` changes
  the features, while featx matches each text run alone, unpadded;
- the whole harness runs end to end and writes its results file.
"""

from __future__ import annotations

import json

import pytest
import torch

from featx.bench import extract_bench as eb
from featx.bench.reference import reference_language, reference_tokenizer, reference_vision, unpadded_language
from featx.extract.language import LanguageExtractor, tokenize

LENGTHS = [5, 31, 9, 64, 12, 7, 40, 18, 6, 25]  # uneven on purpose: heavy global padding


def _case(name: str) -> eb.LanguageCase:
    return next(c for c in eb.TINY_LANGUAGE if c.name == name)


@pytest.fixture(scope="module")
def llama():
    return eb.build_language(_case("tiny-llama"), "cpu")


@pytest.fixture(scope="module")
def gpt2():
    return eb.build_language(_case("tiny-gpt2"), "cpu")


def _featx(loaded, texts):
    # several batches (token budget 96), so length sorting and reordering are exercised
    return LanguageExtractor(loaded, "avg").extract(texts, max_batch_size=3, token_budget=96).tensors


def test_texts_have_the_requested_token_lengths(llama):
    texts = eb.make_texts(llama.tokenizer, LENGTHS)
    assert [len(t) for t in tokenize(llama.tokenizer, texts, None)] == LENGTHS


def test_caption_lengths_look_like_wit_captions():
    lengths = eb.caption_lengths(1024)
    assert 40 <= sum(lengths) / len(lengths) <= 60
    assert min(lengths) >= 5 and max(lengths) == 240


def test_reference_matches_featx_for_a_rotary_model(llama):
    texts = eb.make_texts(llama.tokenizer, LENGTHS)
    fx = _featx(llama, texts)
    ref, info = reference_language(llama.model, llama.tokenizer, texts)
    assert info["max_tokens"] == max(LENGTHS) and info["padded_tokens"] == len(texts) * max(LENGTHS)
    assert fx["feats"].shape == ref["feats"].shape == (len(texts), 3, 64)
    assert (fx["feats"] - ref["feats"]).abs().max() < 1e-4
    assert torch.allclose(fx["loss"], ref["loss"], atol=1e-4) and torch.allclose(fx["bpb"], ref["bpb"], atol=1e-4)
    assert torch.equal(fx["mask"], ref["mask"])  # featx saves the reference's left-padded mask
    cmp = eb.compare(fx["feats"], ref["feats"])
    assert cmp["max_abs_diff"] < 1e-4 and cmp["min_cos"] > 0.9999 and len(cmp["per_layer_min_cos"]) == 3


def test_reference_drifts_for_gpt2_while_featx_matches_unpadded_runs(gpt2):
    texts = eb.make_texts(gpt2.tokenizer, LENGTHS)
    fx = _featx(gpt2, texts)
    ref, _ = reference_language(gpt2.model, gpt2.tokenizer, texts)
    truth = unpadded_language(gpt2.model, gpt2.tokenizer, texts)
    assert (fx["feats"] - truth["feats"]).abs().max() < 1e-4
    assert torch.allclose(fx["loss"], truth["loss"], atol=1e-4)
    drift = eb.compare(ref["feats"], truth["feats"])
    assert drift["max_abs_diff"] > 1e-2 and drift["min_cos"] < 0.99
    # the longest text has no padding in the reference's batches: unaffected there
    longest = LENGTHS.index(max(LENGTHS))
    assert (ref["feats"][longest] - truth["feats"][longest]).abs().max() < 1e-4


def test_reference_leaves_the_callers_tokenizer_alone(llama):
    before = (llama.tokenizer.padding_side, llama.tokenizer.pad_token)
    tok = reference_tokenizer(llama.tokenizer)
    assert tok.padding_side == "left" and tok.pad_token == tok.eos_token
    assert (llama.tokenizer.padding_side, llama.tokenizer.pad_token) == before


def test_reference_vision_matches_featx():
    from featx.catalog.spec import ModelSpec
    from featx.extract.loading import load_vision
    from featx.extract.vision import VisionExtractor

    case = eb.TINY_VISION[0]
    loaded = load_vision(ModelSpec(id=case.timm_name, modality="vision", family="vit", init="random",
                                   config=case.config), "random", "cpu")
    images = eb.synthetic_images(5, size=(64, 48))
    fx = VisionExtractor(loaded, "cls", case.timm_name).extract(images, batch_size=2, num_workers=0).feats
    ref, info = reference_vision(loaded.model, loaded.transform, images)
    assert ref.shape == fx.shape == (5, 2, 48)
    assert (fx - ref).abs().max() < 1e-5, info


def test_harness_runs_end_to_end_and_writes_results(tmp_path):
    out = tmp_path / "extract-cpu.json"
    results = eb.run(device="cpu", tiny=True, n=6, vision=True, out=str(out), num_workers=0)
    saved = json.loads(out.read_text())
    assert saved["machine"]["cpu_count"] and saved["machine"]["torch"] and "loadavg_end" in saved
    by_name = {r["model"]: r for r in results["language"]}
    assert set(by_name) == {"tiny-gpt2", "tiny-llama"}
    for r in results["language"] + results["vision"]:
        assert "error" not in r, r.get("error")
        assert r["featx"]["seconds"] > 0 and r["reference"]["seconds"] > 0 and r["ratio_samples_per_s"] > 0
    assert by_name["tiny-llama"]["correctness"]["featx_vs_reference"]["max_abs_diff"] < 1e-4
    g = by_name["tiny-gpt2"]["correctness"]
    assert g["featx_vs_unpadded"]["max_abs_diff"] < 1e-4
    assert g["reference_vs_unpadded"]["max_abs_diff"] > g["featx_vs_unpadded"]["max_abs_diff"]
    assert by_name["tiny-llama"]["featx"]["padding_efficiency"] >= by_name["tiny-llama"]["reference"]["padding_efficiency"]
    assert results["vision"][0]["correctness"]["featx_vs_reference"]["max_abs_diff"] < 1e-5
    assert "| tiny-llama |" in eb.markdown_table(results)
