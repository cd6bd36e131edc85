"""The models a benchmark runs (frozen specs as data, random weights: speed and the padding
questions do not depend on them) and how they are built, as featx builds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from featx.catalog.spec import ModelSpec

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device name; first match wins.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),  # also GH200
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


@dataclass(frozen=True)
class LanguageCase:
    name: str
    arch: str
    config: dict[str, Any]
    positions: str  # "absolute" (reference is wrong under left padding) | "rotary" | "alibi"
    note: str = ""


@dataclass(frozen=True)
class VisionCase:
    name: str
    timm_name: str
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""


CPU_LANGUAGE = (
    LanguageCase("gpt2-124m", "gpt2", {"vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
                                       "n_positions": 1024}, "absolute",
                 "GPT-2 small's real config (124M parameters, tied head), random weights"),
    LanguageCase("llama-style-134m", "llama",
                 {"vocab_size": 32000, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "num_key_value_heads": 12, "intermediate_size": 2048, "max_position_embeddings": 2048,
                  "tie_word_embeddings": False}, "rotary",
                 "Llama architecture scaled down to GPT-2 small's width/depth: hidden 768, 12 layers, 12 heads, "
                 "SwiGLU 2048, vocab 32000 (Llama's), untied head, rotary positions, RMSNorm"),
)
GPU_LANGUAGE = (
    LanguageCase("llama-7b", "llama",
                 {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048},
                 "rotary", "LLaMA-7B dims (LlamaConfig defaults), random weights, bf16"),
    LanguageCase("mistral-7b", "mistral",
                 {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
                  "sliding_window": 4096}, "rotary", "Mistral-7B-v0.1 dims (GQA 8 KV heads), random weights, bf16"),
)
GPU_VISION = (
    VisionCase("vit_large_patch14_dinov2", "vit_large_patch14_dinov2.lvd142m", note="304M, 518 px (1370 tokens)"),
    VisionCase("vit_huge_patch14_clip_224", "vit_huge_patch14_clip_224.laion2b", note="632M, 224 px (257 tokens)"),
)
CPU_VISION = (VisionCase("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k", note="86M, 224 px (197 tokens)"),)
TINY_LANGUAGE = (
    LanguageCase("tiny-gpt2", "gpt2", {"vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512},
                 "absolute", "smoke-size GPT-2"),
    LanguageCase("tiny-llama", "llama", {"vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2,
                                         "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128},
                 "rotary", "smoke-size Llama"),
)
TINY_VISION = (VisionCase("tiny-vit", "vit_tiny_patch16_224.augreg_in21k", {"depth": 2, "embed_dim": 48, "num_heads": 3},
                          "smoke-size ViT, 224 px"),)


def bf16_peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s (MFU's denominator); None for an unknown device."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def build_language(case: LanguageCase, device: str, seed: int = 0):
    """A random-weight model of ``case`` as featx loads it (``Loaded``). On CPU through featx's own
    ``load_language``; on CUDA built directly on the device (``load_language`` initialises random
    weights on the CPU first, minutes for a 7B model) with featx's dtype and attention choice."""
    from featx.extract.loading import Loaded, load_language, pick_dtype
    from featx.extract.tokenizer import tiny_bpe

    spec = ModelSpec(id=f"featx-bench/{case.name}", modality="language", family=case.arch, arch=case.arch,
                     init="random", tokenizer="tiny-bpe", vocab=512, config=dict(case.config))
    if not device.startswith("cuda"):
        return load_language(spec, "random", device, seed=seed)
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = tiny_bpe(512)
    fallbacks: list[str] = []
    dtype = pick_dtype(device, fallbacks)
    config = AutoConfig.for_model(case.arch, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  **case.config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    return Loaded(model, tokenizer=tokenizer, num_params=sum(p.numel() for p in model.parameters()),
                  dtype=str(dtype).removeprefix("torch."), device=device, attn_implementation="sdpa",
                  fallbacks=fallbacks)
