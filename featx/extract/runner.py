"""One model's rows turned into feature tensors: load it, size its batches from the token budget,
run the language or vision extractor. What to skip, how to commit and how failures are recorded
is the pipeline's job (``featx.pipeline.runner``)."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from featx import settings
from featx.catalog.spec import ModelSpec
from featx.data.datasets import Rows
from featx.extract.loading import Loaded, load_language, load_vision
from featx.extract.result import Extraction
from featx.logs import Progress
from featx.plan.batching import images_per_batch
from featx.plan.memory import ModelShape, estimate_dtype, token_budget

# On CPU ~1k tokens per batch is about as fast as 8k (within +-13% either way over two benchmark
# runs) and needs 25-50% less memory (bench/README.md).
CPU_TOKEN_BUDGET = 1024


@dataclass
class ExtractOptions:
    """How rows are batched and where they run: nothing here changes a file's bytes (what does is
    the run's request, ``featx.pipeline.request``)."""

    batch_size: int | None = None  # None: as many rows as the token budget allows
    token_budget: int | None = None  # None: from free accelerator memory (CPU: CPU_TOKEN_BUDGET)
    device: str | None = None
    num_workers: int = settings.NUM_WORKERS


def _token_budget(loaded: Loaded, opts: ExtractOptions, shape: ModelShape) -> int:
    """Padded tokens per batch: the user's, or what the estimator fits into free GPU memory
    (``shape`` without parameters: the weights are already resident)."""
    if opts.token_budget:
        return opts.token_budget
    if not loaded.device.startswith("cuda"):
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
    return max(token_budget(shape, estimate_dtype(loaded.dtype), free), 256)


def language_budget(loaded: Loaded, opts: ExtractOptions) -> int:
    return _token_budget(loaded, opts, ModelShape.from_config(loaded.model.config))


def vision_batch_size(loaded: Loaded, opts: ExtractOptions) -> int:
    """Images per batch: the user's, or as many as the token budget holds."""
    from featx.extract.vision import image_tokens

    model = loaded.model
    budget = _token_budget(loaded, opts, ModelShape(0, model.num_features, len(getattr(model, "blocks", ()))))
    return images_per_batch(budget, image_tokens(model), opts.batch_size)


def load_model(spec: ModelSpec, device: str, init: str = "pretrained", seed: int = 0,
               quantised: bool = False) -> Loaded:
    """``spec`` on ``device``; ``quantised`` (4-bit NF4) as ``spec.quantised(--qlora)`` decides."""
    if spec.modality == "language":
        return load_language(spec, init, device, quantised, seed)
    return load_vision(spec, init, device, seed)


def extract_rows(spec: ModelSpec, loaded: Loaded, rows: Rows, pool: str, opts: ExtractOptions,
                 progress: Progress) -> Extraction:
    """Features of every row, in order (``pool`` already checked against the model's modality)."""
    if spec.modality == "language":
        from featx.extract.language import LanguageExtractor

        return LanguageExtractor(loaded, pool).extract(rows.texts, opts.batch_size, language_budget(loaded, opts), progress)
    from featx.extract.vision import VisionExtractor

    return VisionExtractor(loaded, pool, spec.id).extract(rows.images, vision_batch_size(loaded, opts),
                                                          opts.num_workers, progress)


def feature_bytes_per_row(loaded: Loaded) -> int | None:
    """Bytes of one row's features from the loaded model (what sizes automatic row shards):
    language models' L+1 states and ViT blocks; None where the widths are only known by running
    it (convnets' stages), which stay one file unless sharding is asked for."""
    model = loaded.model
    config = getattr(model, "config", None)
    if hasattr(config, "num_hidden_layers") and hasattr(config, "hidden_size"):
        itemsize = torch.empty((), dtype=getattr(torch, loaded.dtype)).element_size()
        return (config.num_hidden_layers + 1) * config.hidden_size * itemsize
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)) and len(blocks):
        return len(blocks) * model.num_features * 4  # float32
    return None


def free_memory() -> None:
    """Give a finished model's memory back before the next one loads (drop references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
