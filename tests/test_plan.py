"""Batch planning and the memory estimator (pure; no torch)."""

from __future__ import annotations

import random

import pytest

from featx.plan.batching import plan_batches
from featx.plan.memory import (GiB, LOSS_CHUNK_BYTES, ModelShape, loss_chunk_bytes, loss_chunk_tokens, peak_bytes,
                               token_budget, weight_bytes)


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_row_once_within_budget(seed):
    rng = random.Random(seed)
    lengths = [max(1, int(rng.lognormvariate(3.5, 0.6))) for _ in range(300)]
    plan = plan_batches(lengths, max_batch_size=32, token_budget=1024)
    flat = [i for b in plan.batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch, longest in zip(plan.batches, plan.longest):
        assert longest == max(lengths[i] for i in batch)
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * longest <= 1024
        assert all(lengths[i] >= 0.8 * longest for i in batch)  # bounded padding per batch
    assert [plan.longest[i] >= plan.longest[i + 1] for i in range(len(plan.longest) - 1)] == [True] * (len(plan.longest) - 1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in plan.batches)
    assert plan.padding_efficiency(lengths) == pytest.approx(sum(lengths) / padded)
    # the reference pads every batch to the longest text of the data set
    assert plan.padding_efficiency(lengths) > sum(lengths) / (len(lengths) * max(lengths)) * 2
    assert plan.padding_efficiency(lengths) >= 0.8


def test_a_row_longer_than_the_budget_gets_its_own_batch():
    plan = plan_batches([5000, 10, 10], max_batch_size=8, token_budget=1000)
    assert plan.batches[0] == (0,) and plan.batches[1] == (1, 2)


def test_invalid_plan_arguments():
    with pytest.raises(ValueError):
        plan_batches([1, 2], 0, 10)


def test_memory_estimate_grows_with_tokens_and_4bit_is_smaller():
    llama7b = ModelShape(params=6_738_415_616, hidden=4096, layers=32, vocab=32000)
    assert weight_bytes(llama7b, "bfloat16") == 2 * llama7b.params
    assert weight_bytes(llama7b, "nf4") < weight_bytes(llama7b, "bfloat16") / 3
    assert peak_bytes(llama7b, "bfloat16", 8192) > peak_bytes(llama7b, "bfloat16", 1024)
    budget = token_budget(llama7b, "bfloat16", 80 * GiB)
    assert peak_bytes(llama7b, "bfloat16", budget) <= 0.9 * 80 * GiB
    assert token_budget(llama7b, "bfloat16", 8 * GiB) == 0  # the weights alone do not fit


@pytest.mark.parametrize("vocab", [512, 32000, 50257, 151936, 256000])
def test_loss_chunk_is_sized_by_bytes_within_bounds(vocab):
    tokens = loss_chunk_tokens(vocab)
    assert 256 <= tokens <= 4096
    assert tokens * vocab * 4 <= LOSS_CHUNK_BYTES or tokens == 256  # Gemma's 256k vocab: the floor
    assert tokens == 4096 or (tokens + 1) * vocab * 4 > LOSS_CHUNK_BYTES  # as large as the bytes allow


def test_a_small_batch_holds_only_its_own_logits():
    llama7b = ModelShape(params=6_738_415_616, hidden=4096, layers=32, vocab=32000)
    assert loss_chunk_bytes(llama7b, 100) == loss_chunk_bytes(llama7b) * 100 // loss_chunk_tokens(32000)
    assert loss_chunk_bytes(llama7b, 10**6) == loss_chunk_bytes(llama7b)
    assert peak_bytes(llama7b, "bfloat16", 100) < peak_bytes(llama7b, "bfloat16", 0) + 100 * 4096 * 40


def test_without_a_row_cap_only_the_token_budget_and_fill_bound_a_batch():
    lengths = [10] * 500 + [40] * 30
    plan = plan_batches(lengths, None, token_budget=1000)
    assert [len(b) for b in plan.batches] == [25, 5, 100, 100, 100, 100, 100]
    assert plan.summary()["max_batch_size"] is None
    assert sorted(i for b in plan.batches for i in b) == list(range(len(lengths)))


def test_mlp_width_comes_from_each_familys_config_key():
    from types import SimpleNamespace as C

    base = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100}
    assert ModelShape.from_config(C(**base, intermediate_size=512)).mlp == 512  # llama, gemma, mistral
    assert ModelShape.from_config(C(**base, ffn_dim=300)).mlp == 300  # opt
    assert ModelShape.from_config(C(**base, n_inner=None)).mlp == 256  # gpt2: None means 4 x hidden
    assert ModelShape.from_config(C(**base)).mlp == 256
