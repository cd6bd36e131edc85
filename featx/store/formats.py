"""Feature file formats: the reference's ``torch.save`` dict, or safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def write_tensors(tensors: dict[str, Any], path: Path, fmt: str) -> None:
    if fmt == "pt":
        torch.save(tensors, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        plain = {k: (v.contiguous() if v.dim() else v.reshape(1)) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        meta = {k: str(v) for k, v in tensors.items() if not isinstance(v, torch.Tensor)}
        save_file(plain, str(path), metadata=meta)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def read_tensors(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """Load a feature file without executing pickled code (``weights_only=True``)."""
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "pt":
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        out: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}
        for k, v in (f.metadata() or {}).items():
            out[k] = int(v) if v.isdigit() else v
    for k in ("loss", "bpb"):
        if k in out and out[k].shape == (1,):
            out[k] = out[k].reshape(())
    return out
