"""``featx models --sizing``: the GPU class, device count and batch plan each model's Job gets."""

from __future__ import annotations

from typing import Any, Iterable

from featx.catalog.spec import ModelSpec
from featx.plan.sizing import GiB, GpuClass, choose, load_classes


def sizing_rows(specs: Iterable[ModelSpec], classes: Iterable[GpuClass] | None = None, qlora: bool = False,
                batch_size: int | None = None) -> list[dict[str, Any]]:
    """One row per model: id, params, dtype, weights_gib, est_peak_gib (per device), gpu_class,
    gpus, token_budget (language; "-" for vision), batch_size ("-": the token budget alone)."""
    classes = tuple(classes) if classes is not None else load_classes()
    rows = []
    for spec in specs:
        s = choose(spec, classes, qlora, batch_size=batch_size)
        rows.append({"id": spec.id, "params": spec.params, "dtype": s.dtype,
                     "weights_gib": round(s.weight_bytes / GiB, 2), "est_peak_gib": round(s.est_peak_bytes / GiB, 2),
                     "gpu_class": s.class_name, "gpus": s.gpus, "token_budget": s.token_budget or "-",
                     "batch_size": s.batch_size or "-"})
    return rows
