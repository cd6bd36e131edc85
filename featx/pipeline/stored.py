"""The models a store already holds for a data set: what ``featx status`` and ``featx align``
work on when no ``--modelset``/``--models`` is given, so a newcomer's ``extract`` → ``status`` →
``align`` needs no flag repeated."""

from __future__ import annotations

from dataclasses import replace

from featx.catalog import get_spec
from featx.catalog.spec import ModelSpec
from featx.errors import UsageError
from featx.pipeline.keys import artifact_key, dataset_prefix
from featx.store.records import StoredState


def stored_models(states: dict[str, StoredState], dataset: str, subset: str | None, modality: str = "all",
                  pool: str | None = None, caption_idx: int = 0, fmt: str = "pt") -> list[ModelSpec]:
    """Models with a manifest or failure record in ``states`` (one scan of the data set's prefix)
    whose artifact key, for these options, is one of the scanned stems; ordered by id."""
    found: dict[str, ModelSpec] = {}
    for st in states.values():
        record = st.manifest or st.failure
        if record is None or record.model_id in found:
            continue
        spec = get_spec(record.model_id)
        if st.manifest and st.manifest.modality != spec.modality:  # a local or unknown id: the manifest knows
            spec = replace(spec, modality=st.manifest.modality)
        if (modality in ("all", spec.modality)
                and artifact_key(spec, dataset, subset, pool, caption_idx, fmt).stem in states):
            found[spec.id] = spec
    if not found:
        raise UsageError(f"no --modelset/--models given and the store holds no {fmt} features under "
                         f"{dataset_prefix(dataset, subset)}; run `featx extract` first, or name the models")
    return [found[k] for k in sorted(found)]


def describe(specs: list[ModelSpec], dataset: str, subset: str | None) -> str:
    """The one line that says which models were picked, and how to pick others."""
    counts = {m: sum(s.modality == m for s in specs) for m in ("language", "vision")}
    detail = ", ".join(f"{n} {m}" for m, n in counts.items() if n)
    noun = "model" if len(specs) == 1 else "models"
    return (f"no --modelset/--models: using the {len(specs)} {noun} ({detail}) the store holds under "
            f"{dataset_prefix(dataset, subset)}")
