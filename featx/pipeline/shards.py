"""Row shards: which rows each shard of a model holds, and how many of them a store has committed.

The layout is ``datasets.Dataset.shard(num_shards, index, contiguous=True)``'s: ``num_shards``
contiguous ranges whose sizes differ by at most one row, in data set order, so shard ``i`` of a
pod and shard ``i`` of a laptop hold the same rows. Pure: no store, no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from featx import settings
from featx.errors import UsageError
from featx.store.keys import SHARD_PREFIX
from featx.store.records import StoredState


@dataclass(frozen=True)
class ShardLayout:
    num_rows: int
    num_shards: int

    def __post_init__(self) -> None:
        if self.num_shards > self.num_rows:
            raise UsageError(f"{self.num_shards} shards of {self.num_rows} rows would leave shards empty: give "
                             f"--num_shards at most {self.num_rows}, or a larger --shard_rows")

    def bounds(self, index: int) -> tuple[int, int]:
        """Rows ``[start, end)`` of shard ``index`` (``datasets.Dataset.shard``'s contiguous split)."""
        div, mod = divmod(self.num_rows, self.num_shards)
        start = div * index + min(index, mod)
        return start, start + div + (index < mod)


def layout_for(num_rows: int, shard_rows: int | None, num_shards: int | None,
               bytes_per_row: int | None = None) -> ShardLayout | None:
    """The layout a run asks for: ``num_shards``; else shards of at most ``shard_rows`` rows; else
    (automatic) about ``settings.auto_shard_bytes()`` of features per shard when ``bytes_per_row``
    is known. None: one file in the reference's format, as a model whose features are small has."""
    if num_shards is not None:
        return ShardLayout(num_rows, num_shards)
    if shard_rows is not None:
        return ShardLayout(num_rows, math.ceil(num_rows / shard_rows))
    if bytes_per_row is None:
        return None
    count = math.ceil(num_rows * bytes_per_row / settings.auto_shard_bytes())
    return ShardLayout(num_rows, count) if count > 1 else None


def committed_shards(states: Mapping[str, StoredState], model_stem: str) -> dict[str, StoredState]:
    """The states of ``model_stem``'s shards in one scan, by their stems."""
    prefix = f"{model_stem}/{SHARD_PREFIX}"
    return {stem: st for stem, st in states.items() if stem.startswith(prefix)}


def shard_count(stem: str) -> int | None:
    """The ``of`` of a shard's stem (``.../shard-00003-of-00128``: 128); None for another name."""
    count = stem.rpartition("-of-")[2]
    return int(count) if count.isdigit() and int(count) > 0 else None


def stored_layout(states: Mapping[str, StoredState], model_stem: str, num_rows: int) -> ShardLayout | None:
    """The layout of the shards already committed for ``model_stem`` over ``num_rows`` rows (an
    automatic rerun continues it rather than starting another); None when there are none."""
    counts = {st.manifest.num_shards for st in committed_shards(states, model_stem).values()
              if st.manifest is not None and st.manifest.num_shards}
    if len(counts) != 1:
        return None
    count = counts.pop()
    return ShardLayout(num_rows, count) if count <= num_rows else None


def format_indices(indices: list[int] | tuple[int, ...]) -> str:
    """``0-11,14``: shard indices as runs, short however many shards there are (a log line, a Job's
    ``--shard_indices``); ``parse_indices`` reads it back."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)


def parse_indices(text: str) -> tuple[int, ...]:
    """The shard indices ``0-11,14`` names, in the order written; refused unless each is a
    non-negative number or an ascending range, and none repeats."""
    out: list[int] = []
    for part in str(text).split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or (dash and int(last) < int(first)):
            raise UsageError(f"{text!r}: give shard indices as 3,7,9 or ranges as 0-11,14")
        out += range(int(first), int(last if dash else first) + 1)
    if len(set(out)) != len(out):
        raise UsageError(f"{text!r} names a shard twice: give each once")
    return tuple(out)
