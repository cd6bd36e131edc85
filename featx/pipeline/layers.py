"""``--layers`` and ``--feature_dtype``: which of a model's layers a file keeps, and in what dtype.

Layer numbers are the file's layer axis of the full extraction (language: 0 = embeddings ... L =
final state; vision: blocks or stages), negative ones counted from the end as in Python. Syntax is
checked when the run request is built (one error line, exit 2); the range once the model's depth
is known.
"""

from __future__ import annotations

import re

import torch

from featx.errors import UsageError
from featx.store.formats import Feats

FEATURE_DTYPES = ("bfloat16", "float16", "float32")
_EVERY = re.compile(r"^every:(\d+)$")
_LIST = re.compile(r"^-?\d+(,-?\d+)*$")


def parse_layers(spec: str) -> None:
    """Refuse a ``--layers`` value that is none of ``0,8,16,-1``, ``every:K`` (K >= 1) or ``last``."""
    every = _EVERY.match(spec)
    if spec == "last" or (every and int(every.group(1)) >= 1) or _LIST.match(spec):
        return
    raise UsageError(f"--layers {spec!r}: give a list (0,8,16,-1), every:K (K >= 1) or last")


def layer_indices(spec: str, depth: int) -> list[int]:
    """The layers ``spec`` names in a model of ``depth`` layers, ascending and each once."""
    if spec == "last":
        return [depth - 1]
    every = _EVERY.match(spec)
    if every:
        return list(range(0, depth, int(every.group(1))))
    picked = [int(x) for x in spec.split(",")]
    bad = [i for i in picked if not -depth <= i < depth]
    if bad:
        raise UsageError(f"--layers {spec}: layer {bad[0]} is outside this model's {depth} layers "
                         f"(0..{depth - 1}, or -{depth}..-1)")
    return sorted({i % depth for i in picked})


def select(feats: Feats, indices: list[int] | None, dtype: str | None) -> Feats:
    """``feats`` with only ``indices`` (None: all) along the layer axis, cast to ``dtype`` (None: as is)."""
    if indices is not None:
        feats = [feats[i] for i in indices] if isinstance(feats, list) else feats[:, indices].contiguous()
    if dtype is not None:
        target = getattr(torch, dtype)
        feats = [t.to(target) for t in feats] if isinstance(feats, list) else feats.to(target)
    return feats
