"""Language extraction against independent computations on unpadded single texts."""

from __future__ import annotations

import math

import pytest
import torch

from featx.catalog import get_spec, load_modelset
from featx.extract.language import LanguageExtractor
from featx.extract.loading import load_language

LANGUAGE_SMOKE = [s.id for s in load_modelset("smoke").select("language")]
TEXTS = ["a red circle", "a much longer caption about a blue square next to a river in Zürich, seen at dusk",
         "x", "café", "Geometric study no. 7: stripes in yellow, donated to the archive in 1999"]


@pytest.fixture(scope="module")
def loaded_models():
    cache = {}

    def get(model_id: str):
        if model_id not in cache:
            cache[model_id] = load_language(get_spec(model_id), "random", "cpu", seed=0)
        return cache[model_id]

    return get


def unpadded_reference(loaded, text: str):
    """Per-text run without any padding: hidden states and mean next-token CE from HF itself."""
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        out = loaded.model(input_ids=ids, labels=ids if ids.shape[1] > 1 else None, output_hidden_states=True)
    return out.hidden_states, (out.loss.item() if out.loss is not None else float("nan")), ids.shape[1]


@pytest.mark.parametrize("model_id", LANGUAGE_SMOKE)
def test_features_do_not_depend_on_batch_mates(loaded_models, model_id):
    loaded = loaded_models(model_id)
    alone = LanguageExtractor(loaded, "avg").extract(TEXTS, max_batch_size=1, token_budget=10_000).feats
    mixed = LanguageExtractor(loaded, "avg").extract(TEXTS, max_batch_size=5, token_budget=10_000).feats
    assert alone.shape == mixed.shape == (len(TEXTS), loaded.model.config.num_hidden_layers + 1, 64)
    torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_id", ["featx-smoke/gpt2", "featx-smoke/llama", "featx-smoke/bloom", "featx-smoke/opt",
                                      "featx-smoke/qwen3", "featx-smoke/phi", "featx-smoke/gemma3", "featx-smoke/llama3"])
@pytest.mark.parametrize("pool", ["avg", "last", "max", "cls"])
def test_pooling_equals_unpadded_computation(loaded_models, model_id, pool):
    loaded = loaded_models(model_id)
    feats = LanguageExtractor(loaded, pool).extract(TEXTS, max_batch_size=3, token_budget=10_000).feats
    for i, text in enumerate(TEXTS):
        hidden, _, _ = unpadded_reference(loaded, text)
        ops = {"avg": lambda h: h[0].mean(0), "last": lambda h: h[0, -1], "max": lambda h: h[0].max(0).values,
               "cls": lambda h: h[0, 0]}
        expected = torch.stack([ops[pool](h) for h in hidden])
        torch.testing.assert_close(feats[i], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 7], ids=["one-chunk", "chunks-of-7"])
@pytest.mark.parametrize("model_id", ["featx-smoke/gpt2", "featx-smoke/llama", "featx-smoke/falcon"])
def test_loss_and_bpb_equal_independent_computation(loaded_models, model_id, chunk, monkeypatch):
    """Chunks of 7 tokens cut through texts and batch rows: the per-row sums must still add up."""
    if chunk:
        monkeypatch.setattr("featx.extract.language.loss_chunk_tokens", lambda vocab: chunk)
    loaded = loaded_models(model_id)
    result = LanguageExtractor(loaded, "avg").extract(TEXTS, max_batch_size=4, token_budget=10_000)
    losses, bpbs = [], []
    for text in TEXTS:
        _, mean_ce, n = unpadded_reference(loaded, text)
        if n > 1:
            losses.append(mean_ce)
            bpbs.append(mean_ce * (n - 1) * math.log2(math.e) / len(text.encode("utf-8")))
    assert result.tensors["loss"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert result.tensors["bpb"].item() == pytest.approx(sum(bpbs) / len(bpbs), rel=1e-4)
    assert result.info["loss"] == "chunked"  # the self-check did not fall back to full logits


def test_reference_left_padding_would_corrupt_gpt2(loaded_models):
    """Why right padding: the reference's left padding without position ids shifts GPT-2's
    absolute positions, so a padded text's features differ from its unpadded ones."""
    loaded = loaded_models("featx-smoke/gpt2")
    tok = loaded.tokenizer
    short, long = tok(TEXTS[0])["input_ids"], tok(TEXTS[1])["input_ids"]
    pad = len(long) - len(short)
    ids = torch.tensor([[tok.eos_token_id] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    with torch.no_grad():
        padded = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][0, pad:]
    hidden, _, _ = unpadded_reference(loaded, TEXTS[0])
    assert (padded - hidden[-1][0]).abs().max() > 1e-2
    ours = LanguageExtractor(loaded, "avg").extract([TEXTS[0], TEXTS[1]], 2, 10_000).feats[0, -1]
    torch.testing.assert_close(ours, hidden[-1][0].mean(0), rtol=1e-4, atol=1e-5)


def test_mask_is_the_reference_left_padded_layout(loaded_models):
    loaded = loaded_models("featx-smoke/llama")
    result = LanguageExtractor(loaded, "avg").extract(TEXTS, 4, 10_000)
    lengths = [len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS]
    mask = result.tensors["mask"]
    assert mask.shape == (len(TEXTS), max(lengths))
    assert mask.sum(1).tolist() == lengths
    assert all(mask[i, -1] == 1 for i in range(len(TEXTS)))  # real tokens at the right end


def test_out_of_memory_splits_the_batch(loaded_models, monkeypatch):
    loaded = loaded_models("featx-smoke/llama")
    expected = LanguageExtractor(loaded, "avg").extract(TEXTS, 5, 10_000).feats
    ex = LanguageExtractor(loaded, "avg")
    real_forward = ex.tap.forward

    def forward(ids, *a, **kw):
        if ids.shape[0] > 1:  # pretend only one text fits on the device at a time
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(ids, *a, **kw)

    monkeypatch.setattr(ex.tap, "forward", forward)
    ex.self_check = lambda ids: []
    got = ex.extract(TEXTS, 5, 10_000)
    torch.testing.assert_close(got.feats, expected, rtol=1e-4, atol=1e-5)
    from featx.plan.batching import plan_batches

    lengths = [len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS]
    # halving a batch of b rows down to single rows takes b - 1 splits
    assert got.info["oom_splits"] == sum(len(b) - 1 for b in plan_batches(lengths, 5, 10_000).batches) > 0


def test_out_of_memory_on_a_single_text_is_reported(loaded_models, monkeypatch):
    from featx.errors import EXIT_OOM, OutOfMemoryError

    ex = LanguageExtractor(loaded_models("featx-smoke/llama"), "avg")
    ex.self_check = lambda ids: []
    monkeypatch.setattr(ex.tap, "forward", lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory")))
    with pytest.raises(OutOfMemoryError) as e:
        ex.extract(TEXTS[:2], 2, 10_000)
    assert e.value.exit_code == EXIT_OOM and "--qlora" in str(e.value)


def test_qlora_loads_in_4bit_and_counts_unquantised_params():
    pytest.importorskip("bitsandbytes")
    spec = get_spec("featx-smoke/llama")
    full = load_language(spec, "random", "cpu")
    q = load_language(spec, "random", "cpu", qlora=True)
    assert q.num_params == full.num_params
    assert any("4bit" in type(m).__name__.lower() for m in q.model.modules())
    feats = LanguageExtractor(q, "avg").extract(TEXTS, 4, 10_000).feats
    assert torch.isfinite(feats).all() and feats.shape == (len(TEXTS), 3, 64)


def test_projected_final_state_keeps_every_layer_the_same_width():
    """OPT-350m projects its final state 1024 -> 512 before the head; featx keeps the blocks'
    width for every layer (the reference's torch.stack fails on it)."""
    from featx.catalog.spec import ModelSpec

    spec = ModelSpec(id="test/opt-projected", modality="language", family="opt", arch="opt", init="random",
                     tokenizer="tiny-bpe", vocab=512,
                     config={"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "ffn_dim": 128, "word_embed_proj_dim": 32, "do_layer_norm_before": False})
    loaded = load_language(spec, "random", "cpu")
    result = LanguageExtractor(loaded, "avg").extract(TEXTS, 4, 10_000)
    assert result.feats.shape == (len(TEXTS), 3, 64)
    assert result.info["final_layer"].startswith("last block")
    hidden, mean_ce, n = unpadded_reference(loaded, TEXTS[1])
    torch.testing.assert_close(result.feats[1, :2], torch.stack([h[0].mean(0) for h in hidden[:2]]), rtol=1e-4, atol=1e-5)


def test_image_text_checkpoint_is_extracted_as_its_language_model(tmp_path):
    """Gemma 3 4B+ ship as Gemma3ForConditionalGeneration: featx loads the checkpoint's language
    model alone and its features equal that part of the full image-text model."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from featx.catalog import get_spec
    from featx.extract.tokenizer import tiny_bpe

    text = {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 128}
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 28, "patch_size": 14}
    torch.manual_seed(0)
    full = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)).eval()
    full.save_pretrained(tmp_path / "gemma3-mm")
    tiny_bpe(512).save_pretrained(tmp_path / "gemma3-mm")
    loaded = load_language(get_spec(str(tmp_path / "gemma3-mm")), "pretrained", "cpu")
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM" and "language model" in loaded.fallbacks[0]
    assert loaded.num_params == sum(p.numel() for p in full.model.language_model.parameters())
    feats = LanguageExtractor(loaded, "avg").extract(TEXTS, 3, 10_000).feats
    for i, t in enumerate(TEXTS):
        ids = torch.tensor([loaded.tokenizer(t)["input_ids"]])
        with torch.no_grad():
            hidden = full.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(feats[i], torch.stack([h[0].mean(0) for h in hidden]), rtol=1e-4, atol=1e-5)
