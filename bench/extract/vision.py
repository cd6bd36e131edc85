"""One ViT: featx's extractor (worker transforms, pinned copies) vs the same compute on
pre-transformed tensors ("compute only": the data path removed) vs the reference loop (per-image
transforms in the main loop, batch 4), interleaved."""

from __future__ import annotations

import gc
import time
from typing import Any

import torch

from bench.extract.cases import VisionCase, bf16_peak_flops
from bench.extract.inputs import synthetic_images
from bench.extract.measure import compare, interleaved, ratios, summarize
from bench.extract.reference import block_outputs, reference_vision
from featx.catalog.spec import ModelSpec


def bench_vision(case: VisionCase, device: str, n: int, repeats: int, batch_size: int | None = None,
                 num_workers: int | None = None, seed: int = 0) -> dict[str, Any]:
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
                           "load_s": round(time.perf_counter() - t0, 1), "n": n, "repeats": repeats,
                           "batch_size": batch_size, "num_workers": workers}
    images = synthetic_images(n, seed=seed)
    ext = VisionExtractor(loaded, "cls", spec.id)
    traced = block_outputs(model)  # once per model, as the reference does; not timed
    ext.extract(images[:min(n, batch_size)], batch_size, 0)  # warm-up of both paths
    reference_vision(model, transform, images[:4], extractor=traced)

    t1 = time.perf_counter()
    pre = torch.stack([transform(im) for im in images])
    rec["cpu_transform_ms_per_image"] = round((time.perf_counter() - t1) / n * 1000, 2)
    rec["input_size"] = list(pre.shape[1:])
    if device.startswith("cuda"):
        pre = pre.pin_memory()

    def compute_only() -> None:
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                ext.features(pre[s:s + batch_size].to(ext.device, non_blocking=True)).cpu()

    runs, out = interleaved({"featx": lambda: ext.extract(images, batch_size, workers), "compute_only": compute_only,
                             "reference": lambda: reference_vision(model, transform, images, extractor=traced)},
                            repeats, device)
    del pre
    res, (ref, ref_info) = out["featx"], out["reference"]
    patch = getattr(model.patch_embed, "patch_size", (16, 16))
    h, w = rec["input_size"][1:]
    rec["tokens_per_image"] = (h // patch[0]) * (w // patch[1]) + int(getattr(model, "num_prefix_tokens", 1))
    for side in runs:
        rec[side] = summarize(runs[side])
        rec[side]["samples_per_s"] = round(n / max(rec[side]["seconds"]["median"], 1e-9), 2)
    rec["reference"]["info"] = ref_info
    rec["featx"]["info"] = res.info
    rec["ratio"] = ratios(runs, "reference", "featx")
    rec["featx_over_compute_only"] = ratios(runs, "featx", "compute_only")["wall"]
    rec["correctness"] = {"featx_vs_reference": compare(res.feats, ref)}
    if device.startswith("cuda"):
        peak = bf16_peak_flops(torch.cuda.get_device_name(torch.device(device)))
        rec["flops"] = 2 * loaded.num_params * rec["tokens_per_image"] * n
        if peak:
            for side in runs:
                rec[side]["mfu"] = round(rec["flops"] / rec[side]["seconds"]["median"] / peak, 4)
    del model, loaded, ext, res, out
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rec
