"""Pooling of per-token states into one vector per sample: the only place pooling lives.

Language batches are right-padded: ``lengths[b]`` real tokens at positions ``0..lengths[b]-1``.
Vision tokens carry ``num_prefix`` class/register tokens first; feature maps of convnets and
hierarchical models are ``[B, C, H, W]`` and pool globally over ``H, W``.
"""

from __future__ import annotations

import torch


def pool_tokens(hidden: torch.Tensor, lengths: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, T, D] right-padded states -> [B, D] float32 over each sample's real tokens."""
    h = hidden.float()
    if pool == "cls":
        return h[:, 0]
    if pool == "last":
        return h[torch.arange(h.shape[0], device=h.device), lengths - 1]
    mask = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    if pool == "avg":
        return (h * mask).sum(1) / lengths[:, None].to(h.dtype)
    if pool == "max":
        return h.masked_fill(~mask, float("-inf")).amax(1)
    raise ValueError(f"unknown pool {pool!r}")


def pool_vision(tokens: torch.Tensor, num_prefix: int, pool: str) -> torch.Tensor:
    """[B, P+N, D] block output -> [B, D]: ``cls`` is the first prefix token; ``avg``/``max``
    run over patch tokens only (timm's convention for global pooling)."""
    t = tokens.float()
    if pool == "cls":
        return t[:, 0]
    patches = t[:, num_prefix:]
    if pool == "avg":
        return patches.mean(1)
    if pool == "max":
        return patches.amax(1)
    raise ValueError(f"unknown pool {pool!r}")


def pool_map(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """[B, C, H, W] feature map -> [B, C] float32: global average (the reference's convnet example)
    or max pooling; a map has no class token."""
    f = fmap.float()
    if pool == "avg":
        return f.mean((2, 3))
    if pool == "max":
        return f.amax((2, 3))
    raise ValueError(f"pool {pool!r} is not defined for feature maps")
