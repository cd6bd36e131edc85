"""The models a store already holds for a data set: what ``featx status`` and ``featx align``
work on when no ``--modelset``/``--models`` is given, so a newcomer's ``extract`` → ``status`` →
``align`` needs no flag repeated; and ``verified``, the byte-for-byte check of ``--verify``."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Iterable

from featx.catalog import get_spec
from featx.catalog.spec import ModelSpec
from featx.errors import UsageError
from featx.pipeline.request import RunRequest
from featx.pipeline.shards import committed_shards
from featx.store.base import Store
from featx.store.records import StoredState


def stored_models(states: dict[str, StoredState], request: RunRequest, modality: str = "all") -> list[ModelSpec]:
    """Models with a manifest or failure record in ``states`` (one scan of the request's prefix)
    whose artifact key, for this request, is one of the scanned stems; ordered by id."""
    found: dict[str, ModelSpec] = {}
    for st in states.values():
        record = st.manifest or st.failure
        if record is None or record.model_id in found:
            continue
        try:
            spec = get_spec(record.model_id)
        except UsageError:  # a record naming no model featx could run is no model of this store's
            continue
        if st.manifest and st.manifest.modality != spec.modality:  # a local or unknown id: the manifest knows
            spec = replace(spec, modality=st.manifest.modality)
        key = request.key(spec)
        if modality in ("all", spec.modality) and (key.stem in states or committed_shards(states, key.model_stem)):
            found[spec.id] = spec
    if not found:
        raise UsageError(f"no --modelset/--models given and the store holds no {request.format} features under "
                         f"{request.scan_prefix}; run `featx extract` first, or name the models")
    return [found[k] for k in sorted(found)]


def describe(specs: list[ModelSpec], request: RunRequest) -> str:
    """The one line that says which models were picked, and how to pick others."""
    counts = {m: sum(s.modality == m for s in specs) for m in ("language", "vision")}
    detail = ", ".join(f"{n} {m}" for m, n in counts.items() if n)
    noun = "model" if len(specs) == 1 else "models"
    return (f"no --modelset/--models: using the {len(specs)} {noun} ({detail}) the store holds under "
            f"{request.scan_prefix}")


def verified(store: Store, states: dict[str, StoredState], stems: Iterable[str]) -> dict[str, StoredState]:
    """``store.verify_states`` with a byte progress bar on a terminal (``--verify`` of ``status``
    and ``extract``; the controller's ``verify: true``, whose log is no terminal, shows none)."""
    from tqdm import tqdm

    stems = list(stems)
    total = sum(st.manifest.size for s in stems if (st := states.get(s)) and st.state == "done" and st.manifest)
    with tqdm(total=total, desc="verifying sha256", unit="B", unit_scale=True, file=sys.stderr, disable=None,
              leave=False) as bar:
        return store.verify_states(states, stems, bar.update)
