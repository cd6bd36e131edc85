"""The memory estimator (``featx.plan.memory``) against the live tensor bytes of one real
``LanguageExtractor.run_batch``, without a GPU.

What is compared: ``peak_bytes(shape, dtype, tokens) - weight_bytes - RUNTIME_OVERHEAD`` (what a
batch adds on top of the weights; the overhead stands for the CUDA context and allocator slack,
which a CPU cannot show) with the peak of live tensor bytes allocated during the call
(``bench.estimator.memtrack.LiveBytes``, the analogue of ``torch.cuda.max_memory_allocated`` minus
the weights). Full-size widths, vocabularies and dtypes; depth cut to ``layers`` blocks, since
layers run one after another and their states are pooled as they appear (nothing the estimate
counts grows with depth; ``layers`` is a parameter so that this can be checked).

``fake=True`` runs the model under ``FakeTensorMode``: tensors that pretend to be CPU tensors, with
shapes and dtypes but no data, so a 7B-wide bf16 block costs neither memory nor compute (this CPU
has no bf16 matmul units: ~0.3 GFLOP/s). Op choices are the CPU's (sdpa takes the fused flash
kernel, as CUDA does), and the live-byte count, which depends only on shapes, dtypes and the op
sequence, matches a real run (``tests/test_memory_estimate.py`` checks it) but for one thing: a
fake run cannot see that no row is padded, so it builds the ``[rows, 1, T, T]`` boolean causal
mask a real run skips (1 MiB at 4 x 512 tokens; a padded batch on a GPU builds it too).
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any

import torch

from bench.estimator.memtrack import LiveBytes
from bench.extract.cases import CPU_LANGUAGE, GPU_LANGUAGE, LanguageCase
from featx.plan.memory import ModelShape

SEQ_LEN = 512  # tokens per row; a batch of ``tokens`` has ``tokens // SEQ_LEN`` rows

EXTRA_7B = (
    LanguageCase("gemma-7b", "gemma",
                 {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
                  "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
                  "max_position_embeddings": 8192}, "rotary",
                 "Gemma-7B dims: MLP 8x hidden (GeGLU), head_dim 256, 256k vocabulary (tied head)"),
    LanguageCase("falcon-7b", "falcon",
                 {"vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
                  "multi_query": True, "parallel_attn": True, "bias": False, "new_decoder_architecture": False,
                  "alibi": False}, "rotary", "Falcon-7B dims: multi-query attention, parallel attention/MLP"),
)
CASES = {c.name: c for c in (*CPU_LANGUAGE, *GPU_LANGUAGE, *EXTRA_7B)}


def build(case: LanguageCase, dtype: torch.dtype, layers: int, fake: bool):
    """``case`` with ``layers`` blocks and random weights as a ``LanguageExtractor``, and the
    mode to run it under (``FakeTensorMode`` or nothing)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoConfig, AutoModelForCausalLM

    from featx.extract.language import LanguageExtractor
    from featx.extract.loading import Loaded
    from featx.extract.tokenizer import tiny_bpe

    tok = tiny_bpe(512)
    mode: Any = FakeTensorMode() if fake else contextlib.nullcontext()
    with mode:
        config = AutoConfig.for_model(case.arch, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      **case.config)
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    loaded = Loaded(model, tokenizer=tok, num_params=sum(p.numel() for p in model.parameters()),
                    dtype=str(dtype).removeprefix("torch."), attn_implementation="sdpa")
    return LanguageExtractor(loaded, "avg"), mode


def full_shape(case: LanguageCase) -> ModelShape:
    """The estimator's view of ``case`` at full depth (parameters counted on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(case.arch, **case.config)
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    return ModelShape.from_config(config, params)


def check_language(case: LanguageCase, dtype: str, tokens: int, layers: int = 2, fake: bool = True,
                   seq_len: int = SEQ_LEN) -> dict[str, Any]:
    """Predicted vs measured bytes a batch of ``tokens`` tokens (rows of ``seq_len`` random ids)
    adds to the weights; ``forward_peak`` and ``loss_peak`` split the measurement into the
    layers (with pooling) and the chunked loss on top of the forward's outputs. ``total_ratio``
    is what the GPU check (``predicted_over_allocated``) would read: the full-depth model's
    predicted peak over its weights plus the measured bytes."""
    from featx.extract.language import chunked_token_ce, collate
    from featx.plan.memory import (RUNTIME_OVERHEAD, bytes_per_token, loss_chunk_bytes, loss_chunk_tokens,
                                   peak_bytes, weight_bytes)

    seq_len = min(seq_len, tokens)
    ext, mode = build(case, getattr(torch, dtype), layers, fake)
    cfg = ext.model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (tokens // seq_len, seq_len), generator=g).tolist()
    shape = full_shape(case)
    weights = weight_bytes(shape, dtype)
    predicted = peak_bytes(shape, dtype, tokens) - weights - RUNTIME_OVERHEAD
    t0 = time.perf_counter()
    with mode:
        ext.run_batch(ids)  # warm-up: lazily built buffers are not part of a batch
        gc.collect()
        with LiveBytes() as whole:
            ext.run_batch(ids)
        gc.collect()
        with torch.inference_mode():
            batch = collate(ids, ext.pad_id, ext.device)
            with LiveBytes() as fwd:
                _, last = ext.tap.forward(batch.ids, batch.attn, batch.lengths)
            with LiveBytes() as loss:
                chunked_token_ce(ext.model, last, batch)
    return {"case": case.name, "arch": case.arch, "dtype": dtype, "layers": layers, "tokens": tokens,
            "rows": len(ids), "seq_len": seq_len, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
            "loss_chunk_tokens": loss_chunk_tokens(cfg.vocab_size), "mode": "fake" if fake else "real",
            "predicted_bytes": predicted, "predicted_per_token_bytes": tokens * bytes_per_token(shape, dtype),
            "predicted_loss_chunk_bytes": loss_chunk_bytes(shape, tokens),
            "measured_bytes": whole.peak, "peak_op": whole.peak_op, "forward_peak_bytes": fwd.peak,
            "forward_output_bytes": fwd.live, "loss_peak_bytes": loss.peak,
            "ratio": round(predicted / max(whole.peak, 1), 3), "full_params": shape.params, "full_layers": shape.layers,
            "total_ratio": round(peak_bytes(shape, dtype, tokens) / (weights + whole.peak), 3), "seconds": round(time.perf_counter() - t0, 2)}
