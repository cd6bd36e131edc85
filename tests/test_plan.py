"""Batch planning and the memory estimator (pure; no torch)."""

from __future__ import annotations

import random

import pytest

from featx.plan.batching import plan_batches
from featx.plan.memory import GiB, ModelShape, peak_bytes, token_budget, weight_bytes


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
