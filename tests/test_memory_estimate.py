"""The live-bytes tracker on known allocation sequences, and the memory estimator's safety
property (predicted >= measured, what keeps a planned batch from running out of memory) on
full-width layers on the CPU. Sizes only, never timings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.estimator import check as ec
from bench.estimator.memtrack import LiveBytes
from bench.extract.cases import LanguageCase
from featx.plan.memory import GiB, token_budget, weight_bytes

MiB = 2**20


def test_peak_of_a_known_sequence():
    with torch.inference_mode(), LiveBytes() as m:
        a = torch.empty(MiB, dtype=torch.float32)  # 4 MiB
        b = torch.zeros(2 * MiB, dtype=torch.float32)  # 8 MiB
        del a
        c = torch.empty(MiB // 2, dtype=torch.float32)  # 2 MiB, into the room a left
        assert m.live == 10 * MiB
        del c
    assert m.peak == 12 * MiB
    assert m.live == 8 * MiB
    del b
    assert m.live == 0


def test_views_and_in_place_ops_add_nothing():
    w = torch.ones(256, 256)  # exists before entry: never counted, nor are its views
    with LiveBytes() as m:
        x = torch.ones(MiB)  # 4 MiB
        views = [x.view(1024, 1024), x[::2], x.view(1024, 1024).t(), w.t(), w[0]]
        x.add_(1)
        x.view(1024, 1024).mul_(2)
        w.mul_(1)
        torch.mul(x, 2, out=x)
        y = x.reshape(1024, 1024)
    assert m.peak == m.live == 4 * MiB
    del views, y


def test_matmul_chain_and_composite_temporaries():
    n = 512
    a = torch.randn(n, n)
    with torch.inference_mode(), LiveBytes() as m:
        b = a @ a  # 1 MiB
        c = b @ a  # 1 MiB
        d = c @ b  # 1 MiB, while b and c live
        del b, c
        e = d @ d
    assert m.peak == 3 * n * n * 4
    assert m.live == 2 * n * n * 4
    del d, e
    logits, labels = torch.randn(256, 1024), torch.zeros(256, dtype=torch.long)
    with torch.inference_mode(), LiveBytes() as m:  # cross_entropy = log_softmax (seen) + nll_loss
        torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert m.peak >= 256 * 1024 * 4


def test_fake_run_counts_what_a_real_run_allocates():
    """FakeTensorMode (used for bf16 7B widths) against real compute, on a small bf16 Llama; the
    fake run may hold one causal mask more (it cannot see that no row is padded)."""
    case = LanguageCase("small-llama", "llama", {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 688,
                                                 "num_hidden_layers": 2, "num_attention_heads": 4,
                                                 "num_key_value_heads": 2}, "rotary")
    real = ec.check_language(case, "bfloat16", 512, seq_len=128, fake=False)
    fake = ec.check_language(case, "bfloat16", 512, seq_len=128, fake=True)
    mask = real["rows"] * real["seq_len"] ** 2
    assert 0 <= fake["measured_bytes"] - real["measured_bytes"] <= mask
    assert 0 <= fake["forward_peak_bytes"] - real["forward_peak_bytes"] <= mask


def test_estimate_covers_a_batch():
    """Predicted >= measured for 7B-wide bf16 blocks (fake) and GPT-2 small in fp32 (real).
    Gemma's 8x-wide MLP at the largest budget is the case a per-hidden constant once missed."""
    llama = ec.check_language(ec.CASES["llama-7b"], "bfloat16", 512, layers=1)
    gemma = ec.check_language(ec.CASES["gemma-7b"], "bfloat16", 16384, layers=1)
    gpt2 = ec.check_language(ec.CASES["gpt2-124m"], "float32", 512, fake=False)
    for r in (llama, gemma, gpt2):
        assert r["measured_bytes"] > 0
        assert r["predicted_bytes"] >= r["measured_bytes"], r


@pytest.mark.parametrize("name", ["llama-7b", "mistral-7b", "gemma-7b", "falcon-7b"])
def test_the_budget_chosen_on_a_big_gpu_keeps_measured_7b_peaks_within_1_5x_the_weights(name):
    """Issue target on measured bytes, not on the estimator: at the token budget the runner picks
    for an 80 GiB GPU's free memory after loading (a shape without parameters), the weights plus
    the live bytes one batch adds (7B widths, fake tensors) stay within 1.5x the weights."""
    shape = ec.full_shape(ec.CASES[name])
    weights = weight_bytes(shape, "bfloat16")
    budget = token_budget(dataclasses.replace(shape, params=0), "bfloat16", 80 * GiB - weights)
    assert budget >= 4096  # a batch large enough to keep the tensor cores busy
    r = ec.check_language(ec.CASES[name], "bfloat16", budget, layers=1)
    assert r["measured_bytes"] > 0
    assert weights + r["measured_bytes"] <= 1.5 * weights, r


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "efficientnet_b0", "swin_tiny_patch4_window7_224"])
def test_estimate_covers_a_convnet_image(name):
    """Convnets and Swin are priced by their largest feature map (``image_tokens``): predicted >=
    the live bytes one image adds (real widths, random weights), measured at the dispatcher.
    EfficientNet's expanded blocks are wider than any of its feature levels: the case to watch."""
    timm = pytest.importorskip("timm")
    from featx.extract.pooling import pool_map
    from featx.extract.vision import image_tokens, stage_maps
    from featx.plan.memory import ModelShape, bytes_per_token

    with torch.random.fork_rng():  # random weights and input; the global generator stays as it was
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, *model.pretrained_cfg["input_size"])
    with torch.inference_mode(), LiveBytes() as m:
        [pool_map(f, "avg") for f in stage_maps(model, x)]
    shape = ModelShape(0, model.num_features, len(model.feature_info))
    predicted = image_tokens(model) * bytes_per_token(shape, "float32")
    assert 0 < m.peak <= predicted, (m.peak, predicted, m.peak_op)
