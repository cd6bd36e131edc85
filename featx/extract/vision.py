"""Vision extraction: every block's output of a timm backbone, pooled as the block produces it.

ViT-family models (one token width through all blocks) give ``feats [N, blocks, D]``. Convnets and
hierarchical models (ResNet, ConvNeXt, EfficientNet, RegNet, Swin) give one feature map per stage
from timm's ``forward_intermediates``, globally pooled to ``[N, C_l]``: a list of layers whose
widths differ (the reference's ``examples/example_convnet.py``), stacked only where they agree.

Hooks on ``model.blocks`` pool each block's tokens while ``forward_features`` runs, so the outputs
of all blocks never exist at once (ViT-g at 518 px: 40 blocks x 1370 tokens x 1536 per image).
A one-image self-check compares the hooks with timm's ``forward_intermediates`` (unnormalised
block outputs) and falls back to it where they differ or the model has no block list.
Images are decoded and transformed in data-loader worker processes (the reference did it one by
one in the main loop, 4-10 ms per image, while the GPU waited) and copied from pinned memory;
pooled results go back to pinned host memory without blocking (``featx.extract.transfer``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Union

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from featx.errors import OutOfMemoryError, PermanentError, UsageError
from featx.extract.loading import Loaded
from featx.extract.pooling import pool_map, pool_vision
from featx.extract.result import Extraction
from featx.extract.transfer import finish, to_host


Layers = Union[torch.Tensor, list[torch.Tensor]]  # [B, L, D] stacked, or one [B, C_l] per layer


class _Transformed(Dataset):
    """Decoded, transformed images; an unreadable one travels back from the worker as its
    message (a worker's exception would reach the main process as a multi-line traceback)."""

    def __init__(self, images: Any, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str]:
        try:
            image = self.images[i]
        except PermanentError as e:
            return None, str(e)
        return self.transform(image), ""


def _collate(items: list[tuple[torch.Tensor | None, str]]) -> torch.Tensor | str:
    """A batch tensor, or the first unreadable image's message."""
    errors = [error for _, error in items if error]
    return errors[0] if errors else default_collate([x for x, _ in items])


def _batch(item: torch.Tensor | str) -> torch.Tensor:
    if isinstance(item, str):
        raise PermanentError(item)
    return item


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


def is_token_model(model: Any) -> bool:
    """timm's ViT family (VisionTransformer, Eva, Beit) keeps one token width through its blocks;
    convnets and hierarchical models give feature maps whose width changes from stage to stage."""
    return hasattr(model, "num_prefix_tokens")


def stage_maps(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output [B, C_l, H_l, W_l] (each block's, where timm indexes blocks), unnormalised."""
    return list(model.forward_intermediates(x, intermediates_only=True))


def image_tokens(model: Any) -> int:
    """Tokens a block sees per image (patches plus class/register tokens). A feature-map model
    counts the elements of its largest map in units of its final width, so that the estimator's
    per-token memory (linear in width) prices its widest activation."""
    if not is_token_model(model):
        _, h, w = model.pretrained_cfg["input_size"]
        largest = max((h // f["reduction"]) * (w // f["reduction"]) * f["num_chs"] for f in model.feature_info)
        return -(-largest // model.num_features)
    patches = int(getattr(getattr(model, "patch_embed", None), "num_patches", 0) or 0)
    return max(1, patches + int(getattr(model, "num_prefix_tokens", 0) or 0))


def check_pool(model: Any, pool: str, model_id: str) -> int:
    """Number of prefix tokens; refuses ``cls`` before any work for a model without one."""
    num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if pool == "cls" and (num_prefix == 0 or getattr(model, "cls_token", None) is None):
        raise UsageError(f"{model_id} has no class token; use --pool avg or --pool max for it")
    return num_prefix


def stack_uniform(layers: list[torch.Tensor]) -> Layers:
    """``[N, L, D]`` where every layer has one width (how featx stores ViT features); the list otherwise."""
    return torch.stack(layers, 1) if len({t.shape[1] for t in layers}) == 1 else layers


def _cat(parts: list[Layers]) -> Layers:
    """Batches back into rows, layer by layer for the list form."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [torch.cat(layer) for layer in zip(*parts)]


def _to_host(feats: Layers) -> Layers:
    if isinstance(feats, torch.Tensor):
        return to_host(feats, torch.float32)
    return [to_host(t, torch.float32) for t in feats]


def _blocks(model: Any) -> torch.nn.Module | None:
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)) and len(blocks) else None


class VisionExtractor:
    def __init__(self, loaded: Loaded, pool: str, model_id: str):
        self.loaded, self.model, self.pool = loaded, loaded.model, pool
        self.num_prefix = check_pool(self.model, pool, model_id)
        self.device = next(self.model.parameters()).device
        self.maps = not is_token_model(self.model)
        self.use_hooks = not self.maps and _blocks(self.model) is not None

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return pool_vision(tokens, self.num_prefix, self.pool)

    def _hooked(self, x: torch.Tensor) -> torch.Tensor:
        pooled: list[torch.Tensor] = []
        handles = [b.register_forward_hook(lambda _m, _a, out: pooled.append(self._pool(out)))
                   for b in _blocks(self.model)]
        try:
            self.model.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(pooled, 1)

    def _intermediates(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._pool(t) for t in block_tokens(self.model, x)], 1)

    def features(self, x: torch.Tensor) -> Layers:
        """Pooled block outputs [B, blocks, D], or pooled stage maps [B, C_l] per stage (float32,
        on the device) of a transformed batch."""
        if self.maps:
            return [pool_map(f, self.pool) for f in stage_maps(self.model, x)]
        return self._hooked(x) if self.use_hooks else self._intermediates(x)

    @torch.inference_mode()
    def self_check(self, x: torch.Tensor) -> list[str]:
        """Hooks must reproduce ``forward_intermediates`` on one image, else featx uses the latter.
        Stage maps must be ``[B, C, H, W]`` with timm's ``feature_info`` widths: a model whose
        intermediates come in another layout is refused rather than pooled over the wrong axes."""
        if self.maps:
            shapes = [tuple(t.shape) for t in stage_maps(self.model, x.to(self.device))]
            widths = [f["num_chs"] for f in self.model.feature_info]
            if [len(s) for s in shapes] != [4] * len(widths) or [s[1] for s in shapes] != widths:
                raise PermanentError(f"{type(self.model).__name__}: forward_intermediates gave {shapes}, not "
                                     f"[B, C, H, W] maps of widths {widths}; featx cannot pool this architecture")
            return []
        if not self.use_hooks:
            return ["no block list to hook; using forward_intermediates"]
        x = x.to(self.device)
        ref, got = self._intermediates(x), self._hooked(x)
        if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * max(ref.abs().max().item(), 1.0)):
            return []
        self.use_hooks = False
        return ["block hooks differ from forward_intermediates; using forward_intermediates"]

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> Layers:
        try:
            return self.features(x.to(self.device, non_blocking=True))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if "out of memory" not in str(e).lower():
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if x.shape[0] == 1:
                raise OutOfMemoryError("out of GPU memory on a single image; use a larger GPU") from None
            h = x.shape[0] // 2
            return _cat([self._run(x[:h]), self._run(x[h:])])

    def extract(self, images: Any, batch_size: int, num_workers: int,
                progress: Callable[[int], None] | None = None) -> Extraction:
        t0 = time.perf_counter()
        dataset = _Transformed(images, self.loaded.transform)
        notes = self.self_check(_batch(_collate([dataset[0]])))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate,
                            num_workers=num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=4 if num_workers else None)
        parts, input_size = [], []
        for item in loader:  # results stay in flight; the device never waits for the host
            x = _batch(item)
            input_size = list(x.shape[1:])
            parts.append(_to_host(self._run(x)))
            if progress:
                progress(x.shape[0])
        finish(self.device)
        feats = _cat(parts)
        if isinstance(feats, list):
            feats = stack_uniform(feats)
        pooling = "stage maps" if self.maps else "hooks" if self.use_hooks else "forward_intermediates"
        info = {"batch_plan": {"batch_size": batch_size, "batches": len(parts), "num_workers": num_workers},
                "input_size": input_size, "num_prefix_tokens": self.num_prefix,
                "block_pooling": pooling, "self_check": notes,
                "timings": {"extract_s": round(time.perf_counter() - t0, 3)}}
        return Extraction({"feats": feats, "num_params": self.loaded.num_params}, info)
