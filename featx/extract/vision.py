"""Vision extraction through timm's ``forward_intermediates``: every block, any timm backbone.

Images are decoded and transformed in data-loader worker processes (the reference did it one by
one in the main loop, 4-10 ms per image, while the GPU waited) and copied from pinned memory.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from featx.errors import OutOfMemoryError, UsageError
from featx.extract.loading import Loaded
from featx.extract.pooling import pool_vision
from featx.extract.result import Extraction


class _Transformed(Dataset):
    def __init__(self, images: Any, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


def block_tokens(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output tokens [B, P+N, D] (prefix tokens first), unnormalised, as timm gives
    them with ``return_prefix_tokens=True``."""
    out = model.forward_intermediates(x, intermediates_only=True, output_fmt="NLC", norm=False,
                                      return_prefix_tokens=True)
    blocks = []
    for item in out:
        if isinstance(item, tuple):
            spatial, prefix = item
            blocks.append(torch.cat([prefix, spatial], 1) if prefix is not None else spatial)
        else:
            blocks.append(item)
    return blocks


def check_pool(model: Any, pool: str, model_id: str) -> int:
    """Number of prefix tokens; refuses ``cls`` before any work for a model without one."""
    num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if pool == "cls" and (num_prefix == 0 or getattr(model, "cls_token", None) is None):
        raise UsageError(f"{model_id} has no class token; use --pool avg or --pool max for it")
    return num_prefix


class VisionExtractor:
    def __init__(self, loaded: Loaded, pool: str, model_id: str):
        self.loaded, self.model, self.pool = loaded, loaded.model, pool
        self.num_prefix = check_pool(self.model, pool, model_id)
        self.device = next(self.model.parameters()).device

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            x = x.to(self.device, non_blocking=True)
            return torch.stack([pool_vision(t, self.num_prefix, self.pool) for t in block_tokens(self.model, x)], 1).cpu()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if "out of memory" not in str(e).lower():
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if x.shape[0] == 1:
                raise OutOfMemoryError("out of GPU memory on a single image; use a larger GPU") from None
            h = x.shape[0] // 2
            return torch.cat([self._run(x[:h]), self._run(x[h:])])

    def extract(self, images: Any, batch_size: int, num_workers: int,
                progress: Callable[[int], None] | None = None) -> Extraction:
        t0 = time.perf_counter()
        loader = DataLoader(_Transformed(images, self.loaded.transform), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if num_workers else None)
        parts, input_size = [], []
        for x in loader:
            input_size = list(x.shape[1:])
            parts.append(self._run(x))
            if progress:
                progress(x.shape[0])
        feats = torch.cat(parts)
        info = {"batch_plan": {"batch_size": batch_size, "batches": len(parts), "num_workers": num_workers},
                "input_size": input_size,
                "num_prefix_tokens": self.num_prefix,
                "timings": {"extract_s": round(time.perf_counter() - t0, 3)}}
        return Extraction({"feats": feats, "num_params": self.loaded.num_params}, info)
