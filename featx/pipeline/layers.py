"""``--layers`` and ``--feature_dtype``: which of a model's layers a file keeps, and in what dtype.

Pure (no torch): the run request, and so the controller, parse layers here; the selection itself
is ``featx.store.formats.select``. Layer numbers are the file's layer axis of the full extraction (language: 0 = embeddings ... L =
final state; vision: blocks or stages), negative ones counted from the end as in Python. Syntax is
checked when the run request is built (one error line, exit 2); the range once the model's depth
is known.
"""

from __future__ import annotations

import re

from featx.errors import UsageError

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

