"""Extraction speed and memory: featx's extractors against the reference loop
(``featx.bench.reference``), same weights, same inputs, one process.

What it measures, per model:
- seconds, samples/s, tokens/s (real tokens, i.e. what the texts contain; ``computed_tokens_per_s``
  counts padding too), padding efficiency (real / padded tokens), peak memory;
- the ratio featx / reference of samples/s;
- correctness per layer (max abs diff, min cosine over samples): rotary models against the
  reference (left padding does not change them); absolute-position models (GPT-2) against each
  text run alone and unpadded, since the reference is wrong for them (its drift is reported);
- GPU only: model FLOP utilisation, MFU = 2 x parameters x real tokens / seconds / the device's
  dense bf16 peak (forward-pass matmul FLOPs; attention's T^2 term and padding are not counted, so
  padding shows up as lower MFU), and the memory estimator's predicted peak against the measured one.

Peak memory: on CPU the process's resident-set high-water mark (``VmHWM``), reset before each run
by writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) after ``gc.collect()`` and glibc's
``malloc_trim(0)``; where the reset is refused, a thread samples ``VmRSS`` every 2 ms instead.
Reported as the peak and the peak minus the resident size just before the run (weights are already
resident). On CUDA ``torch.cuda.max_memory_allocated`` (and ``max_memory_reserved``), reset before
each run.

Inputs: ``caption_lengths`` draws log-normal token lengths like WIT captions (mean ~50, clipped to
[5, 240]); ``make_texts`` builds texts of exactly those lengths from caption words with the tokenizer
the model uses (featx's offline byte-level BPE). Weights are random: speed and the padding
questions do not depend on them.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import random
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from featx.bench.reference import block_outputs, reference_language, reference_vision, unpadded_language
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

# Caption-like words (WIT captions are short descriptive English with names and places).
CAPTION_WORDS = (
    "a the of in on at with and by from view photograph portrait painting church station river bridge "
    "mountain village town city street building house castle tower museum park garden lake sea coast beach "
    "harbour island valley forest road railway train bus car ship boat aircraft airport map flag coat arms "
    "statue monument memorial cathedral temple mosque palace hall school university library theatre stadium "
    "team player match season football cricket olympic championship national football club league cup final "
    "festival concert band singer actor film poster album cover logo signature seal stamp coin banknote "
    "north south east west old new upper lower central main great small little saint king queen prince "
    "general president minister bishop emperor family wife son daughter born died century war battle army "
    "navy soldier regiment district province county region state republic kingdom empire parish municipality "
    "interior exterior entrance facade detail front side rear aerial night winter summer spring autumn "
    "during after before circa year early late first second third one two three many species flower tree "
    "bird fish insect mammal specimen skull leaf fruit seed plant animal wild habitat range distribution"
).split()


def caption_lengths(n: int, mean: float = 50.0, sigma: float = 0.8, lo: int = 5, hi: int = 240,
                    seed: int = 0) -> list[int]:
    """Log-normal token lengths with the given mean (before clipping to [lo, hi])."""
    g = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma**2 / 2
    x = torch.exp(torch.randn(n, generator=g) * sigma + mu)
    return [int(v) for v in x.round().clamp(lo, hi)]


def make_texts(tokenizer: Any, lengths: list[int], seed: int = 0) -> list[str]:
    """Texts of caption words whose token counts (with the tokenizer's special tokens) are the
    given lengths. Byte-level BPE splits on spaces first, so a text's count is the sum of its
    words' counts; one-token words fill the end exactly."""
    rng = random.Random(seed)

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - count("a")
    spaced = {w: count(" " + w) for w in CAPTION_WORDS}
    first = {w: count(w) for w in CAPTION_WORDS}
    ones = [w for w, c in spaced.items() if c == 1] or ["a"]
    texts = []
    for target in lengths:
        words, total = [], special
        while total < target:
            w = rng.choice(CAPTION_WORDS)
            c = spaced[w] if words else first[w]
            if total + c > target:
                w = rng.choice(ones)
                c = spaced[w] if words else first[w]
            words.append(w)
            total += c
        texts.append(" ".join(words))
    return texts


def synthetic_images(n: int, size: tuple[int, int] = (512, 384), seed: int = 0) -> list[Any]:
    """Noise images of a typical WIT photo size (decoded PIL images, as the data set yields)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- memory and time


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (0 where unavailable)."""
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Measurement:
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (all threads): steadier than wall time on a shared machine
    peak_bytes: int = 0  # CPU: peak RSS; CUDA: max_memory_allocated
    peak_delta_bytes: int = 0  # peak minus the value just before the run
    reserved_peak_bytes: int | None = None  # CUDA only
    method: str = ""


@contextmanager
def measure(device: str) -> Iterator[Measurement]:
    """Wall time and peak memory of the enclosed block (see the module doc for the methods)."""
    m = Measurement()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        c0, t0 = time.process_time(), time.perf_counter()
        yield m
        torch.cuda.synchronize()
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - c0
        m.peak_bytes = torch.cuda.max_memory_allocated()
        m.reserved_peak_bytes = torch.cuda.max_memory_reserved()
        m.peak_delta_bytes = m.peak_bytes - before
        m.method = "torch.cuda.max_memory_allocated"
        return
    _malloc_trim()
    before = _proc_status("VmRSS")
    sampler: dict[str, Any] = {}
    if _reset_hwm():
        m.method = "VmHWM after clear_refs=5"
    else:
        m.method = "VmRSS sampled every 2 ms"
        stop = threading.Event()
        sampler["peak"] = before

        def sample():
            while not stop.is_set():
                sampler["peak"] = max(sampler["peak"], _proc_status("VmRSS"))
                time.sleep(0.002)

        sampler["stop"], sampler["thread"] = stop, threading.Thread(target=sample, daemon=True)
        sampler["thread"].start()
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - t0
        m.cpu_seconds = time.process_time() - c0
        if sampler:
            sampler["stop"].set()
            sampler["thread"].join()
            m.peak_bytes = max(sampler["peak"], _proc_status("VmRSS"))
        else:
            m.peak_bytes = _proc_status("VmHWM")
        m.peak_delta_bytes = m.peak_bytes - before


# ---------------------------------------------------------------- comparisons


def compare(feats: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Per layer: max |a - b| and min cosine over samples, for ``[N, L, D]`` features."""
    a, b = feats.float(), ref.float()
    if a.shape != b.shape:
        return {"error": f"shape {tuple(a.shape)} vs {tuple(b.shape)}"}
    diff = (a - b).abs().amax(dim=(0, 2))
    cos = F.cosine_similarity(a, b, dim=-1).amin(0)
    return {"max_abs_diff": float(diff.max()), "min_cos": float(cos.min()),
            "max_abs_value": float(b.abs().max()),
            "per_layer_max_abs_diff": [float(x) for x in diff], "per_layer_min_cos": [round(float(x), 6) for x in cos]}


def _scalar_diffs(out: dict[str, Any], got: dict[str, Any], want: dict[str, Any]) -> None:
    for k in ("loss", "bpb"):
        if k in got and k in want:
            out[f"{k}_abs_diff"] = abs(float(got[k]) - float(want[k]))


# ---------------------------------------------------------------- machine


def bf16_peak_flops(device_name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def machine_info(device: str) -> dict[str, Any]:
    import transformers

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    cpu = platform.processor() or ""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "mem_total_bytes": _meminfo("MemTotal"), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "timm": timm_version,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()], "uptime_start": _uptime(),
        "device": device,
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=p.name, gpu_memory_bytes=p.total_memory, gpu_capability=f"{p.major}.{p.minor}",
                    bf16_peak_flops=bf16_peak_flops(p.name), cuda=torch.version.cuda)
    return info


def _meminfo(key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _uptime() -> str | None:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_slug(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------- models


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


def _run_stats(m: Measurement, n: int, real: int, padded: int) -> dict[str, Any]:
    s = max(m.seconds, 1e-9)
    return {"seconds": round(m.seconds, 3), "cpu_seconds": round(m.cpu_seconds, 2), "samples_per_s": round(n / s, 2), "tokens_per_s": round(real / s, 1),
            "computed_tokens_per_s": round(padded / s, 1), "real_tokens": real, "padded_tokens": padded,
            "padding_efficiency": round(real / padded, 4) if padded else None,
            "peak_bytes": m.peak_bytes, "peak_delta_bytes": m.peak_delta_bytes,
            **({"reserved_peak_bytes": m.reserved_peak_bytes} if m.reserved_peak_bytes is not None else {})}


# ---------------------------------------------------------------- language


def bench_language(case: LanguageCase, device: str, n: int, batch_size: int | None = None,
                   token_budget: int | None = None, truth: bool | None = None, warmup: bool = True,
                   profile_dir: str | None = None, seed: int = 0,
                   also_plans: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """One language model: featx vs the reference loop (and vs unpadded truth where asked; by
    default for absolute-position models, where the reference is not a valid baseline).
    ``also_plans``: more (max_batch_size, token_budget) pairs to time featx with (what-if runs
    for planning changes; reported under ``featx_variants``)."""
    from featx.extract.language import LanguageExtractor, tokenize
    from featx.extract.runner import ExtractOptions, language_budget
    from featx.plan.batching import plan_batches
    from featx.plan.memory import ModelShape, bytes_per_token, estimate_dtype, loss_chunk_bytes, peak_bytes

    truth = case.positions == "absolute" if truth is None else truth
    t0 = time.perf_counter()
    loaded = build_language(case, device, seed)
    model, tok = loaded.model, loaded.tokenizer
    cfg = model.config
    rec: dict[str, Any] = {"model": case.name, "arch": case.arch, "positions": case.positions, "note": case.note,
                           "config": case.config, "params": loaded.num_params, "dtype": loaded.dtype,
                           "attn_implementation": loaded.attn_implementation, "load_s": round(time.perf_counter() - t0, 1),
                           "n": n}
    texts = make_texts(tok, caption_lengths(n, seed=seed), seed=seed)
    lengths = [len(t) for t in tokenize(tok, texts, None)]
    real = sum(lengths)
    rec["lengths"] = {"mean": round(real / n, 1), "median": sorted(lengths)[n // 2], "max": max(lengths),
                      "min": min(lengths), "total": real}
    budget = language_budget(loaded, ExtractOptions(batch_size=batch_size, token_budget=token_budget))
    plan = plan_batches(lengths, batch_size, budget)
    featx_padded = sum(len(b) * m for b, m in zip(plan.batches, plan.longest))
    largest_batch_tokens = max(len(b) * m for b, m in zip(plan.batches, plan.longest))
    rec["featx_plan"] = {**plan.summary(), "largest_batch_tokens": largest_batch_tokens}

    if warmup:  # first-call costs (kernel selection, allocator growth) kept out of both timings
        LanguageExtractor(loaded, "avg").extract(texts[:8], batch_size, budget)
        reference_language(model, tok, texts[:8])

    prof = _profiler(profile_dir)
    with measure(device) as m_fx:
        if prof:
            prof.start()
        res = LanguageExtractor(loaded, "avg").extract(texts, batch_size, budget)
        if prof:
            prof.stop()
    if prof:
        _write_profile(prof, profile_dir, f"featx-{case.name}")
    rec["featx"] = {**_run_stats(m_fx, n, real, featx_padded), "info": res.info}
    fx = {"feats": res.tensors["feats"], "loss": res.tensors["loss"], "bpb": res.tensors["bpb"]}
    del res
    gc.collect()
    variants = []
    for vbs, vbudget in also_plans or ():
        vplan = plan_batches(lengths, vbs, vbudget)
        vpadded = sum(len(b) * m for b, m in zip(vplan.batches, vplan.longest))
        with measure(device) as m_v:
            vres = LanguageExtractor(loaded, "avg").extract(texts, vbs, vbudget)
        variants.append({"max_batch_size": vbs, "token_budget": vbudget, **_run_stats(m_v, n, real, vpadded),
                         "batches": len(vplan.batches), "timings": vres.info.get("timings"),
                         "max_abs_diff_vs_default_plan": float((vres.tensors["feats"].float() - fx["feats"].float()).abs().max())})
        del vres
        gc.collect()

    with measure(device) as m_ref:
        ref, ref_info = reference_language(model, tok, texts)
    rec["reference"] = {**_run_stats(m_ref, n, real, ref_info["padded_tokens"]), "info": ref_info}
    rec["memory_method"] = m_fx.method
    rec["ratio_samples_per_s"] = round(m_ref.seconds / max(m_fx.seconds, 1e-9), 2)
    rec["ratio_cpu_time"] = round(m_ref.cpu_seconds / max(m_fx.cpu_seconds, 1e-9), 2)
    for v in variants:
        v["ratio_samples_per_s"] = round(m_ref.seconds / max(v["seconds"], 1e-9), 2)
        v["ratio_cpu_time"] = round(m_ref.cpu_seconds / max(v["cpu_seconds"], 1e-9), 2)
    if variants:
        rec["featx_variants"] = variants

    correctness: dict[str, Any] = {}
    correctness["featx_vs_reference"] = compare(fx["feats"], ref["feats"])
    _scalar_diffs(correctness["featx_vs_reference"], fx, ref)
    if truth:
        with measure(device) as m_tr:
            gt = unpadded_language(model, tok, texts)
        rec["unpadded_per_text_s"] = round(m_tr.seconds, 2)
        correctness["featx_vs_unpadded"] = compare(fx["feats"], gt["feats"])
        _scalar_diffs(correctness["featx_vs_unpadded"], fx, gt)
        correctness["reference_vs_unpadded"] = compare(ref["feats"], gt["feats"])
        _scalar_diffs(correctness["reference_vs_unpadded"], ref, gt)
    rec["correctness"] = correctness
    rec["outputs"] = {"featx": {"loss": float(fx["loss"]), "bpb": float(fx["bpb"])},
                      "reference": {"loss": float(ref["loss"]), "bpb": float(ref["bpb"])}}

    shape = ModelShape.from_config(cfg, loaded.num_params)
    dtype = estimate_dtype(loaded.dtype)
    est: dict[str, Any] = {"tokens_per_batch": largest_batch_tokens,
                           "predicted_peak_bytes": peak_bytes(shape, dtype, largest_batch_tokens),
                           "predicted_activation_bytes": largest_batch_tokens * bytes_per_token(shape, dtype)
                           + loss_chunk_bytes(shape, largest_batch_tokens)}
    if device.startswith("cuda"):
        weights = torch.cuda.memory_allocated()  # the model is all that is left resident
        free, total = torch.cuda.mem_get_info()
        context = max(total - free - torch.cuda.memory_reserved(), 0)
        est.update(weights_bytes=weights, cuda_context_bytes=context, measured_peak_allocated_bytes=m_fx.peak_bytes,
                   measured_peak_device_bytes=(m_fx.reserved_peak_bytes or 0) + context)
        est["predicted_over_allocated"] = round(est["predicted_peak_bytes"] / max(m_fx.peak_bytes, 1), 3)
        est["predicted_over_device"] = round(est["predicted_peak_bytes"] / max(est["measured_peak_device_bytes"], 1), 3)
        est["peak_over_weights"] = round(m_fx.peak_bytes / max(weights, 1), 3)
        peak = bf16_peak_flops(torch.cuda.get_device_name(torch.device(device)))
        flops = 2 * loaded.num_params * real
        rec["flops"] = flops
        if peak:
            rec["featx"]["mfu"] = round(flops / m_fx.seconds / peak, 4)
            rec["reference"]["mfu"] = round(flops / m_ref.seconds / peak, 4)
    else:
        est["measured_peak_delta_rss_bytes"] = m_fx.peak_delta_bytes
    rec["estimator"] = est
    del model, loaded, fx, ref
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rec


# ---------------------------------------------------------------- vision


def bench_vision(case: VisionCase, device: str, n: int, batch_size: int | None = None,
                 num_workers: int | None = None, warmup: bool = True, seed: int = 0) -> dict[str, Any]:
    """One ViT: featx's extractor (worker transforms, pinned copies) vs the same compute on
    pre-transformed tensors ("GPU-only") vs the reference loop (per-image transforms, batch 4)."""
    from featx import settings
    from featx.extract.loading import load_vision
    from featx.extract.runner import ExtractOptions, vision_batch_size
    from featx.extract.vision import VisionExtractor

    workers = settings.NUM_WORKERS if num_workers is None else num_workers
    spec = ModelSpec(id=case.timm_name, modality="vision", family="vit", init="random", config=dict(case.config))
    t0 = time.perf_counter()
    loaded = load_vision(spec, "random", device, seed=seed)
    model, transform = loaded.model, loaded.transform
    batch_size = vision_batch_size(loaded, ExtractOptions(batch_size=batch_size))
    rec: dict[str, Any] = {"model": case.name, "timm_name": case.timm_name, "note": case.note, "params": loaded.num_params,
                           "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                           "load_s": round(time.perf_counter() - t0, 1), "n": n, "batch_size": batch_size,
                           "num_workers": workers}
    images = synthetic_images(n, seed=seed)
    ext = VisionExtractor(loaded, "cls", spec.id)
    if warmup:
        ext.extract(images[:min(n, batch_size)], batch_size, 0)
        reference_vision(model, transform, images[:4], extractor=block_outputs(model))

    with measure(device) as m_fx:
        res = ext.extract(images, batch_size, workers)
    fx = res.feats

    t1 = time.perf_counter()
    pre = torch.stack([transform(im) for im in images])
    rec["cpu_transform_ms_per_image"] = round((time.perf_counter() - t1) / n * 1000, 2)
    rec["input_size"] = list(pre.shape[1:])
    if device.startswith("cuda"):
        pre = pre.pin_memory()
    with measure(device) as m_gpu, torch.inference_mode():
        for s in range(0, n, batch_size):
            ext.features(pre[s:s + batch_size].to(ext.device, non_blocking=True)).cpu()
    del pre

    traced = block_outputs(model)  # once per model, as the reference does; not timed
    with measure(device) as m_ref:
        ref, ref_info = reference_vision(model, transform, images, extractor=traced)
    patch = getattr(model.patch_embed, "patch_size", (16, 16))
    h, w = rec["input_size"][1:]
    tokens = (h // patch[0]) * (w // patch[1]) + int(getattr(model, "num_prefix_tokens", 1))
    rec["tokens_per_image"] = tokens
    for key, m in (("featx", m_fx), ("compute_only", m_gpu), ("reference", m_ref)):
        s = max(m.seconds, 1e-9)
        rec[key] = {"seconds": round(m.seconds, 3), "samples_per_s": round(n / s, 2), "peak_bytes": m.peak_bytes,
                    "peak_delta_bytes": m.peak_delta_bytes}
    rec["reference"]["info"] = ref_info
    rec["featx"]["info"] = res.info
    rec["memory_method"] = m_fx.method
    rec["ratio_samples_per_s"] = round(m_ref.seconds / max(m_fx.seconds, 1e-9), 2)
    rec["featx_over_compute_only"] = round(m_fx.seconds / max(m_gpu.seconds, 1e-9), 3)
    rec["correctness"] = {"featx_vs_reference": compare(fx, ref)}
    if device.startswith("cuda"):
        peak = bf16_peak_flops(torch.cuda.get_device_name(torch.device(device)))
        flops = 2 * loaded.num_params * tokens * n
        rec["flops"] = flops
        if peak:
            for key, m in (("featx", m_fx), ("compute_only", m_gpu), ("reference", m_ref)):
                rec[key]["mfu"] = round(flops / m.seconds / peak, 4)
    del model, loaded, ext
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rec


# ---------------------------------------------------------------- profiling


def _profiler(profile_dir: str | None):
    if not profile_dir:
        return None
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed (pip install pyinstrument); running without --profile", flush=True)
        return None
    return Profiler(interval=0.005)


def _write_profile(prof: Any, profile_dir: str, name: str) -> None:
    os.makedirs(profile_dir, exist_ok=True)
    Path(profile_dir, f"{name}.txt").write_text(prof.output_text(unicode=False, color=False, show_all=False))
    Path(profile_dir, f"{name}.html").write_text(prof.output_html())


# ---------------------------------------------------------------- whole run


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The README's tables for one results file."""
    mach = results["machine"]
    where = mach.get("gpu") or mach["cpu"]
    lines = [f"Device: {where} ({mach['cpu_count']} CPUs, torch {mach['torch']}, {mach['torch_threads']} threads); "
             f"load average at start {mach['loadavg_start']}, at end {results.get('loadavg_end')}.", ""]
    lang = results.get("language", [])
    if lang:
        gpu = "mfu" in lang[0].get("featx", {})
        lines += ["| model | params | N | mean/max tok | featx s | ref s | featx samples/s | ref samples/s | "
                  "featx/ref (wall) | featx/ref (CPU time) | featx tok/s | ref tok/s | pad eff featx / ref | peak GiB featx / ref"
                  + (" | MFU featx / ref | est/measured" if gpu else "") + " | correctness |",
                  "|" + "---|" * (15 + (2 if gpu else 0))]
        for r in lang:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:80]} |")
                continue
            fx, rf, c = r["featx"], r["reference"], r["correctness"]
            mem = (lambda d: d["peak_bytes"]) if gpu else (lambda d: d["peak_delta_bytes"])
            if "featx_vs_unpadded" in c:
                corr = (f"featx vs unpadded: max diff {c['featx_vs_unpadded']['max_abs_diff']:.1e}, "
                        f"min cos {c['featx_vs_unpadded']['min_cos']:.4f}; reference vs unpadded: min cos "
                        f"{c['reference_vs_unpadded']['min_cos']:.3f}")
            else:
                corr = (f"featx vs ref: max diff {c['featx_vs_reference']['max_abs_diff']:.1e}, "
                        f"min cos {c['featx_vs_reference']['min_cos']:.5f}")
            row = [r["model"], f"{r['params'] / 1e6:.0f}M", str(r["n"]), f"{r['lengths']['mean']}/{r['lengths']['max']}",
                   f"{fx['seconds']:.2f}", f"{rf['seconds']:.2f}", f"{fx['samples_per_s']:.1f}", f"{rf['samples_per_s']:.1f}",
                   f"**{r['ratio_samples_per_s']:.1f}x**", f"{r.get('ratio_cpu_time', 0):.1f}x", f"{fx['tokens_per_s']:.0f}", f"{rf['tokens_per_s']:.0f}",
                   f"{fx['padding_efficiency']:.2f} / {rf['padding_efficiency']:.2f}", f"{_gib(mem(fx))} / {_gib(mem(rf))}"]
            if gpu:
                e = r["estimator"]
                row += [f"{fx.get('mfu', 0):.2f} / {rf.get('mfu', 0):.3f}", f"{e['predicted_over_allocated']:.2f}"]
            lines.append("| " + " | ".join(row + [corr]) + " |")
            for v in r.get("featx_variants", []):
                lines.append(f"| ↳ featx with --batch_size {v['max_batch_size']} --token_budget {v['token_budget']} | | | | "
                             f"{v['seconds']:.2f} | | {v['samples_per_s']:.1f} | | **{v['ratio_samples_per_s']:.1f}x** | "
                             f"{v['ratio_cpu_time']:.1f}x | {v['tokens_per_s']:.0f} | | {v['padding_efficiency']:.2f} | "
                             f"{_gib(mem(v))} |" + (" | |" if gpu else "") + " same features |")
    vis = results.get("vision", [])
    if vis:
        lines += ["", "| vision model | params | input | N | featx s | compute-only s | featx/compute-only | ref s | "
                  "featx/ref | transform ms/img | max diff vs ref |", "|" + "---|" * 11]
        for r in vis:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:80]} |")
                continue
            lines.append(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['input_size'][1]}px | {r['n']} | "
                         f"{r['featx']['seconds']:.2f} | {r['compute_only']['seconds']:.2f} | {r['featx_over_compute_only']:.2f} | "
                         f"{r['reference']['seconds']:.2f} | {r['ratio_samples_per_s']:.1f}x | {r['cpu_transform_ms_per_image']} | "
                         f"{r['correctness']['featx_vs_reference']['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def run(device: str = "cpu", gpu: bool = False, tiny: bool = False, n: int | None = None, models: list[str] | None = None,
        vision: bool | None = None, out: str | None = None, batch_size: int | None = None,
        token_budget: int | None = None, truth: bool | None = None, profile_dir: str | None = None,
        num_workers: int | None = None, also_plans: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Run the chosen cases, writing the results file after each model (partial runs keep what
    finished). Returns the results dict."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; run `make bench` (CPU) instead")
    if tiny:
        lang_cases, vis_cases = TINY_LANGUAGE, TINY_VISION
    elif gpu:
        lang_cases, vis_cases = GPU_LANGUAGE, GPU_VISION
    else:
        lang_cases, vis_cases = CPU_LANGUAGE, CPU_VISION
    if vision is None:
        vision = gpu or tiny
    if not vision:
        vis_cases = ()
    if models:
        lang_cases = tuple(c for c in lang_cases if c.name in models)
        vis_cases = tuple(c for c in vis_cases if c.name in models)
    n_lang = n or (16 if tiny else 1024 if gpu else 256)
    n_vis = n or (8 if tiny else 1024 if gpu else 64)
    results: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {"device": device, "gpu_mode": gpu, "tiny": tiny, "n_language": n_lang, "n_vision": n_vis,
                     "featx_batch_size": batch_size or "featx default", "token_budget": token_budget or "featx default",
                     "reference_batch_size": 4, "pool": "avg (language), cls (vision)",
                     "lengths": "log-normal, mean 50, sigma 0.8, clipped to [5, 240]"},
        "language": [], "vision": [],
    }
    path = Path(out or f"bench/results/extract-{device_slug(device)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results["uptime_end"] = _uptime()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(path)

    for case in lang_cases:
        print(f"[bench] {case.name}: {n_lang} texts on {device} ...", flush=True)
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            rec = bench_language(case, device, n_lang, batch_size, token_budget, truth, profile_dir=profile_dir,
                                 also_plans=also_plans)
        except Exception as e:  # one failing case does not lose the others
            rec = {"model": case.name, "error": f"{type(e).__name__}: {e}"[:500]}
            _free(device)
        rec["loadavg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
        results["language"].append(rec)
        print(_summary_line(rec), flush=True)
        save()
    for case in vis_cases:
        print(f"[bench] {case.name}: {n_vis} images on {device} ...", flush=True)
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            rec = bench_vision(case, device, n_vis, batch_size, num_workers)
        except Exception as e:
            rec = {"model": case.name, "error": f"{type(e).__name__}: {e}"[:500]}
            _free(device)
        rec["loadavg"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
        results["vision"].append(rec)
        print(_summary_line(rec), flush=True)
        save()
    save()
    print(markdown_table(results))
    print(f"[bench] results written to {path}")
    return results


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _summary_line(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"[bench] {rec['model']}: ERROR {rec['error']}"
    fx, rf = rec["featx"], rec["reference"]
    line = (f"[bench] {rec['model']}: featx {fx['seconds']:.2f}s ({fx['samples_per_s']:.1f}/s), "
            f"reference {rf['seconds']:.2f}s ({rf['samples_per_s']:.1f}/s), ratio {rec['ratio_samples_per_s']:.2f}x")
    if "compute_only" in rec:
        line += f", featx/compute-only {rec['featx_over_compute_only']:.2f}"
    if "mfu" in fx:
        line += f", MFU featx {fx['mfu']:.3f} reference {rf['mfu']:.4f}"
    return line
