"""One language model against the reference loop, interleaved, for one caption-length distribution.

Rows: the first ``n`` captions of a ``dataset_size``-caption set drawn from the distribution. featx
extracts them as ``featx extract`` would (its token budget, no row cap: tokenising, planning and
the self-check inside the clock); the reference loop runs the same rows padded, as it pads every
batch, to the longest caption of the *whole* set (so a smaller ``n`` does not flatter it).

The ratio splits in two: ``padding_factor`` = tokens the reference computes / tokens featx
computes (padding included on both sides), and ``other_factor`` = the rest (the reference's full
logits, KV cache and stacked states against featx's pooling as it goes and chunked loss). A
distribution with equal lengths has no padding to save: its ratio is ``other_factor`` alone.
"""

from __future__ import annotations

import gc
from dataclasses import asdict
from typing import Any

import torch

from bench.extract.cases import LanguageCase, bf16_peak_flops, build_language
from bench.extract.inputs import LengthDist, make_texts
from bench.extract.measure import Spread, compare, interleaved, measure, ratio, ratios, scalar_diffs, summarize
from bench.extract.reference import reference_language, unpadded_language


def _tokens(summary: dict[str, Any], n: int, real: int, padded: int) -> None:
    """Adds throughput at the median wall time and the padding efficiency."""
    s = max(summary["seconds"]["median"], 1e-9)
    summary.update(samples_per_s=round(n / s, 2), tokens_per_s=round(real / s, 1),
                   computed_tokens_per_s=round(padded / s, 1), real_tokens=real, padded_tokens=padded,
                   padding_efficiency=round(real / padded, 4))


def bench_language(case: LanguageCase, loaded: Any, device: str, dist: LengthDist, n: int, dataset_size: int,
                   repeats: int, batch_size: int | None = None, token_budget: int | None = None,
                   truth: bool | None = None, also_plans: tuple[tuple[int, int], ...] = (),
                   seed: int = 0) -> dict[str, Any]:
    """featx vs the reference on ``loaded`` (a ``build_language(case)``), ``repeats`` interleaved
    rounds; correctness against the reference (rotary models) or against each text run alone and
    unpadded (absolute positions, where the reference is wrong; ``truth`` forces either way).
    ``also_plans``: (max rows, token budget) pairs featx also runs with, as more interleaved sides."""
    from featx.extract.language import LanguageExtractor, tokenize
    from featx.extract.runner import ExtractOptions, language_budget
    from featx.plan.batching import plan_batches
    from featx.plan.memory import ModelShape, bytes_per_token, estimate_dtype, loss_chunk_bytes, peak_bytes

    truth = case.positions == "absolute" if truth is None else truth
    model, tok = loaded.model, loaded.tokenizer
    lengths_all = dist.sample(dataset_size, seed=seed)
    texts = make_texts(tok, lengths_all[:n], seed=seed)
    pad_to = max(lengths_all)
    lengths = [len(t) for t in tokenize(tok, texts, None).ids]
    real = sum(lengths)
    rec: dict[str, Any] = {
        "model": case.name, "arch": case.arch, "positions": case.positions, "note": case.note,
        "params": loaded.num_params, "dtype": loaded.dtype, "attn_implementation": loaded.attn_implementation,
        "distribution": dist.describe(), "n": n, "dataset_size": dataset_size, "repeats": repeats,
        "lengths": {"mean": round(real / n, 1), "median": sorted(lengths)[n // 2], "max": max(lengths),
                    "min": min(lengths), "total": real, "dataset_max": pad_to}}
    budget = language_budget(loaded, ExtractOptions(batch_size=batch_size, token_budget=token_budget))
    plans = {"featx": (batch_size, budget), **{f"featx --batch_size {b} --token_budget {t}": (b, t)
                                               for b, t in also_plans}}
    batched = {name: plan_batches(lengths, b, t) for name, (b, t) in plans.items()}
    padded = {name: sum(len(b) * m for b, m in zip(p.batches, p.longest)) for name, p in batched.items()}
    featx_plan = batched["featx"]
    largest_batch_tokens = max(len(b) * m for b, m in zip(featx_plan.batches, featx_plan.longest))
    rec["featx_plan"] = {**featx_plan.summary(), "largest_batch_tokens": largest_batch_tokens}

    # first-call costs (kernel selection, allocator growth) kept out of every timing
    LanguageExtractor(loaded, "avg").extract(texts[:8], batch_size, budget)
    reference_language(model, tok, texts[:8], pad_to=pad_to)

    timings: dict[str, list[dict[str, float]]] = {name: [] for name in plans}  # featx's own, per round

    def featx(name: str, max_rows: int | None, budget: int) -> Any:
        res = LanguageExtractor(loaded, "avg").extract(texts, max_rows, budget)
        timings[name].append(res.info["timings"])
        return res

    sides = {name: (lambda name=name, b=b, t=t: featx(name, b, t)) for name, (b, t) in plans.items()}
    sides["reference"] = lambda: reference_language(model, tok, texts, pad_to=pad_to)
    runs, out = interleaved(sides, repeats, device)
    res = out.pop("featx")
    ref, ref_info = out.pop("reference")
    fx = {k: res.tensors[k] for k in ("feats", "loss", "bpb")}
    rec["featx"] = {**summarize(runs["featx"]), "info": res.info}
    rec["reference"] = {**summarize(runs["reference"]), "info": ref_info}
    _tokens(rec["featx"], n, real, padded["featx"])
    _tokens(rec["reference"], n, real, ref_info["padded_tokens"])
    rec["memory_method"] = runs["featx"][0].method
    rec["ratio"] = ratios(runs, "reference", "featx")
    # featx's once-per-model part (tokenising, planning, self-check: two or three forward passes of the
    # longest row) weighs more on n rows than on a whole data set; its batches alone, for comparison
    setup, batches = ([t[k] for t in timings["featx"]] for k in ("tokenize_plan_s", "extract_s"))
    rec["featx"].update(setup_seconds=asdict(Spread.of(setup)), batches_seconds=asdict(Spread.of(batches)))
    rec["ratio"]["wall_featx_batches_only"] = ratio([m.seconds for m in runs["reference"]], batches)
    rec["padding_factor"] = round(ref_info["padded_tokens"] / padded["featx"], 2)
    rec["other_factor"] = round(rec["ratio"]["wall"]["of_medians"] / rec["padding_factor"], 2)
    rec["featx_variants"] = []
    for name, variant in out.items():
        rec["featx_variants"].append({"name": name, **summarize(runs[name]), "ratio": ratios(runs, "reference", name),
                                      "max_abs_diff_vs_featx": float((variant.tensors["feats"].float()
                                                                      - fx["feats"].float()).abs().max())})
        _tokens(rec["featx_variants"][-1], n, real, padded[name])
    del res, out

    correctness: dict[str, Any] = {"featx_vs_reference": compare(fx["feats"], ref["feats"])}
    scalar_diffs(correctness["featx_vs_reference"], fx, ref)
    if truth:
        gt = unpadded_language(model, tok, texts)
        correctness["featx_vs_unpadded"] = compare(fx["feats"], gt["feats"])
        scalar_diffs(correctness["featx_vs_unpadded"], fx, gt)
        correctness["reference_vs_unpadded"] = compare(ref["feats"], gt["feats"])
        scalar_diffs(correctness["reference_vs_unpadded"], ref, gt)
    rec["correctness"] = correctness
    rec["outputs"] = {"featx": {"loss": float(fx["loss"]), "bpb": float(fx["bpb"])},
                      "reference": {"loss": float(ref["loss"]), "bpb": float(ref["bpb"])}}

    shape = ModelShape.from_config(model.config, loaded.num_params)
    dtype = estimate_dtype(loaded.dtype)
    est: dict[str, Any] = {"tokens_per_batch": largest_batch_tokens,
                           "predicted_peak_bytes": peak_bytes(shape, dtype, largest_batch_tokens),
                           "predicted_activation_bytes": largest_batch_tokens * bytes_per_token(shape, dtype)
                           + loss_chunk_bytes(shape, largest_batch_tokens)}
    fx_peak = rec["featx"]["peak_bytes"]
    if device.startswith("cuda"):
        weights = torch.cuda.memory_allocated()  # the model is all that is left resident
        free, total = torch.cuda.mem_get_info()
        context = max(total - free - torch.cuda.memory_reserved(), 0)
        reserved = max(m.reserved_peak_bytes or 0 for m in runs["featx"])
        est.update(weights_bytes=weights, cuda_context_bytes=context, measured_peak_allocated_bytes=fx_peak,
                   measured_peak_device_bytes=reserved + context,
                   predicted_over_allocated=round(est["predicted_peak_bytes"] / max(fx_peak, 1), 3),
                   predicted_over_device=round(est["predicted_peak_bytes"] / max(reserved + context, 1), 3),
                   peak_over_weights=round(fx_peak / max(weights, 1), 3))
        peak = bf16_peak_flops(torch.cuda.get_device_name(torch.device(device)))
        rec["flops"] = 2 * loaded.num_params * real  # forward matmuls on the real tokens
        if peak:
            for side in ("featx", "reference"):
                rec[side]["mfu"] = round(rec["flops"] / rec[side]["seconds"]["median"] / peak, 4)
    else:
        est["measured_peak_delta_rss_bytes"] = rec["featx"]["peak_delta_bytes"]
    rec["estimator"] = est
    del fx, ref
    gc.collect()
    return rec


def bench_model(case: LanguageCase, device: str, dists: tuple[LengthDist, ...], n: int, dataset_size: int,
                repeats: int, **options: Any) -> list[dict[str, Any]]:
    """``bench_language`` for every distribution on one load of the model."""
    with measure(device) as m:
        loaded = build_language(case, device)
    try:
        return [{**bench_language(case, loaded, device, d, n, dataset_size, repeats, **options),
                 "load_s": round(m.seconds, 1)} for d in dists]
    finally:
        del loaded
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
