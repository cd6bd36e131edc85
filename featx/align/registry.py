"""The metric registry (``metrics.yaml``) as data: what each measure is, for the factory in
:mod:`featx.align.metrics` and for ``featx align --help`` (which must not import torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class MetricInfo:
    """One entry of the metric registry (``metrics.yaml``)."""

    name: str
    kind: str  # similarity (best = max) | distance (best = min)
    range: str
    topk: bool
    symmetric: str  # exact | reference | no
    source: str
    reference: bool = False  # one of platonic-rep's metrics (tests compare against it)


def _load_registry() -> dict[str, MetricInfo]:
    entries = yaml.safe_load((Path(__file__).parent / "metrics.yaml").read_text())
    out = {e["name"]: MetricInfo(**e) for e in entries}
    for i in out.values():  # a typo in the data file must not silently change what "best" means
        if i.kind not in ("similarity", "distance") or i.symmetric not in ("exact", "reference", "no"):
            raise ValueError(f"metrics.yaml: {i.name}: kind {i.kind!r} / symmetric {i.symmetric!r} not allowed")
    return out


#: name -> MetricInfo, in the registry's order.
REGISTRY = _load_registry()
METRICS = tuple(REGISTRY)
#: The reference's (platonic-rep) metrics.
REFERENCE_METRICS = tuple(m for m, i in REGISTRY.items() if i.reference)


def describe() -> str:
    """One line per measure for ``--help``: name, kind, range, whether it takes k, source."""
    return "\n".join(f"  {i.name:<25} {i.kind:<10} {i.range:<10} {'k' if i.topk else ' '}  {i.source}"
                     for i in REGISTRY.values())
