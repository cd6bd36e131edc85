"""Feature file formats: the reference's ``torch.save`` dict, or safetensors.

``feats`` is one ``[N, L, D]`` tensor when every layer has one width, else the reference's list
form, one ``[N, C_l]`` tensor per layer (convnets). Safetensors holds only named tensors, so a list
is stored as ``feats.0``, ``feats.1``, ... and read back as the list.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any, Union

import torch

Feats = Union[torch.Tensor, list[torch.Tensor]]
_LAYER_KEY = re.compile(r"^feats\.(\d+)$")


def feature_layers(feats: Feats) -> list[torch.Tensor]:
    """One ``[N, C_l]`` tensor per layer, for either form."""
    return list(feats) if isinstance(feats, list) else list(feats.unbind(1))


def feats_shape(feats: Feats) -> list[int]:
    """The manifest's ``shape``: the stacked tensor's, or ``[N, layers]`` for the list form."""
    return list(feats.shape) if isinstance(feats, torch.Tensor) else [feats[0].shape[0], len(feats)]


def feats_dtype(feats: Feats) -> str:
    t = feats[0] if isinstance(feats, list) else feats
    return str(t.dtype).removeprefix("torch.")


def layer_shapes(feats: Feats) -> list[list[int]]:
    """The manifest's ``layer_shapes``: ``[N, C_l]`` per layer of the list form; empty when stacked."""
    return [list(t.shape) for t in feats] if isinstance(feats, list) else []


class _WholeWrites:
    """A file whose ``write`` writes all it is given or raises, and keeps what it raised: torch's
    writer turns a short write or a failed one (a full disk) into "unexpected pos"."""

    def __init__(self, f: Any):
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while len(view):
                view = view[self.f.write(view):]
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def write_tensors(tensors: dict[str, Any], path: Path, fmt: str) -> None:
    """Write ``tensors`` to ``path``; a full disk is an ``OSError`` (ENOSPC) in either format."""
    if fmt == "pt":
        with open(path, "wb", buffering=0) as f:
            out = _WholeWrites(f)
            try:
                torch.save(tensors, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        flat = dict(tensors)
        if isinstance(flat.get("feats"), list):
            flat.update({f"feats.{i}": t for i, t in enumerate(flat.pop("feats"))})
        plain = {k: (v.contiguous() if v.dim() else v.reshape(1)) for k, v in flat.items() if isinstance(v, torch.Tensor)}
        meta = {k: str(v) for k, v in flat.items() if not isinstance(v, torch.Tensor)}
        try:
            save_file(plain, str(path), metadata=meta)
        except Exception as e:  # SafetensorError carries the OS error only in its text
            if f"os error {errno.ENOSPC}" in str(e):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise
    else:
        raise ValueError(f"unknown format {fmt!r}")


def read_tensors(path: Path, fmt: str | None = None, mmap: bool = False) -> dict[str, Any]:
    """Load a feature file without executing pickled code (``weights_only=True``). ``mmap``: the
    tensors are views of the file mapped copy-on-write (``torch.load(mmap=True)``; safetensors'
    byte ranges through :func:`_safetensors_mapped`), so a tensor's pages are read only when touched
    and the file may be unlinked once loaded."""
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "pt":
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if mmap:
        out = _safetensors_mapped(path)
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            out = {k: f.get_tensor(k) for k in f.keys()}
            out.update((f.metadata() or {}).items())
    out = {k: (int(v) if v.isdigit() else v) if isinstance(v, str) else v for k, v in out.items()}
    layers = sorted((int(m.group(1)), k) for k in out if (m := _LAYER_KEY.match(k)))
    if layers:
        out["feats"] = [out.pop(k) for _, k in layers]
    for k in ("loss", "bpb"):
        if k in out and out[k].shape == (1,):
            out[k] = out[k].reshape(())
    return out


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_mapped(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors as views of one copy-on-write mapping of it (the format: an
    8-byte little-endian header length, a JSON header of dtype/shape/data_offsets per tensor and
    ``__metadata__``, then the bytes) and its metadata strings."""
    import json
    import mmap as mm

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        mapped = mm.mmap(f.fileno(), 0, access=mm.ACCESS_COPY)
    base = 8 + size
    out: dict[str, Any] = dict(header.pop("__metadata__", None) or {})
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=base + start) if count else \
            torch.empty(0, dtype=dtype)
        out[name] = flat.reshape(info["shape"])
    return out


def select(feats: Feats, indices: list[int] | None, dtype: str | None) -> Feats:
    """``feats`` with only ``indices`` (None: all) along the layer axis, cast to ``dtype`` (None: as is)."""
    if indices is not None:
        feats = [feats[i] for i in indices] if isinstance(feats, list) else feats[:, indices].contiguous()
    if dtype is not None:
        target = getattr(torch, dtype)
        feats = [t.to(target) for t in feats] if isinstance(feats, list) else feats.to(target)
    return feats
