"""Whether two models were fed the same rows, from their manifests alone (pure: no I/O).

A one-file model's manifest fingerprints all its rows; a sharded model's (``featx extract
--shard_rows``) fingerprints each shard's rows. A fingerprint is a running sha256 over the rows in
order, so fingerprints of one layout cannot be recombined into another's: models are compared
shard by shard where their layouts agree (a one-file model is the layout of one shard), and where
they differ only what the manifests share can be compared (data set, subset, revision, rows)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from featx.errors import UsageError
from featx.store import Manifest


@dataclass(frozen=True)
class Rows:
    """The rows a model's features were computed on: its layout (row ranges) and their fingerprints."""

    ranges: tuple[tuple[int, int], ...]
    fingerprints: tuple[str | None, ...]
    data: tuple[str, str, str | None]  # dataset, subset, dataset_revision

    @property
    def num_rows(self) -> int:
        return self.ranges[-1][1]

    @property
    def fingerprint(self) -> str | None:
        """One file: its manifest's; shards: sha256 of the ordered ``start-end:fingerprint`` lines."""
        if len(self.ranges) == 1:
            return self.fingerprints[0]
        lines = "".join(f"{s}-{e}:{fp}\n" for (s, e), fp in zip(self.ranges, self.fingerprints))
        return hashlib.sha256(lines.encode()).hexdigest()

    def describe(self) -> str:
        if len(self.ranges) == 1:
            return f"one file of {self.num_rows} rows"
        sizes = sorted({e - s for s, e in self.ranges})
        return f"{len(self.ranges)} shards of {'/'.join(map(str, sizes))} rows"


def rows_of(manifests: list[Manifest]) -> Rows:
    """A model's rows from its manifest (one file) or its shards' (in row order)."""
    if len(manifests) == 1 and manifests[0].num_shards is None:
        m = manifests[0]
        ranges: tuple[tuple[int, int], ...] = ((0, m.num_rows or 0),)
    else:
        ranges = tuple((m.row_start or 0, m.row_end or 0) for m in manifests)
    m = manifests[0]
    return Rows(ranges, tuple(m.rows_fingerprint for m in manifests), (m.dataset, m.subset, m.dataset_revision))


def check_same_rows(models: list[tuple[str, Rows]]) -> list[str]:
    """Refuse (one line, with the fix) models fed different rows; returns a note for each pair of
    layouts that only the data set's identity could compare (their fingerprints cannot be)."""
    fix = ("re-extract the odd ones with the same --dataset/--subset/--num_samples "
           "(`featx extract --force_remake --models ...`)")
    groups: dict[tuple, list[str]] = {}
    for name, rows in models:
        groups.setdefault((rows.ranges, rows.fingerprints), []).append(name)
    layouts: dict[tuple, list[tuple[str, Rows]]] = {}
    for (ranges, _), names in groups.items():
        rows = next(r for n, r in models if n == names[0])
        layouts.setdefault(ranges, []).append((names[0], rows))
    for ranges, same_layout in layouts.items():
        if len(same_layout) > 1:  # one layout, different fingerprints: different rows
            parts = "; ".join(f"rows_fingerprint {r.fingerprint[:12] if r.fingerprint else '?'} for "
                              f"{', '.join(dict.fromkeys(groups[(ranges, r.fingerprints)]))}" for _, r in same_layout)
            raise UsageError(f"features were computed on different data ({parts}); {fix}")
    if len(layouts) <= 1:
        return []
    firsts = [rows_list[0] for rows_list in layouts.values()]
    (name0, rows0), notes = firsts[0], []
    for name, rows in firsts[1:]:
        if rows.num_rows != rows0.num_rows or rows.data != rows0.data:
            raise UsageError(f"features were computed on different data ({name0}: {rows0.describe()} of "
                             f"{'/'.join(map(str, rows0.data))}; {name}: {rows.describe()} of "
                             f"{'/'.join(map(str, rows.data))}); {fix}")
        differing = set(zip(rows0.ranges, rows0.fingerprints)) ^ set(zip(rows.ranges, rows.fingerprints))
        clash = {r for r, _ in differing} & set(rows0.ranges) & set(rows.ranges)  # one range, two fingerprints
        if clash:
            s, e = sorted(clash)[0]
            raise UsageError(f"features were computed on different data (rows {s}-{e} of {name0} and {name} have "
                             f"different fingerprints); {fix}")
        notes.append(f"{name0} ({rows0.describe()}) and {name} ({rows.describe()}): layouts differ, so their rows "
                     "are compared by data set, revision and row count only; extract with the same --shard_rows "
                     "for a fingerprint check")
    return notes
