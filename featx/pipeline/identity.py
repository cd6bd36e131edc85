"""What a run would produce for one model (its ``RunIdentity``) and whether a committed file is it.
``featx extract``, ``featx status`` and the controller build the identity here, from the same
options, so "done" means the same everywhere: a committed file whose manifest records another
identity is ``stale`` and is redone."""

from __future__ import annotations

import argparse
from dataclasses import replace

from featx.catalog.spec import ModelSpec
from featx.pipeline.keys import artifact_key
from featx.store.records import RunIdentity, StoredState


def add_weight_options(g: argparse._ActionsContainer) -> None:
    """The options besides the data that change a file's bytes, defined once: ``extract`` takes
    them, ``status`` takes them to tell done from stale, and the controller reads them from a Job's
    ``job.extraArgs`` with them."""
    g.add_argument("--qlora", action="store_true", help="load language models in 4-bit NF4 (bitsandbytes)")
    g.add_argument("--init", choices=["pretrained", "random"], default="pretrained",
                   help="random: weights from the config with --seed")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--format", choices=["pt", "safetensors"], default="pt")


def run_identity(spec: ModelSpec, dataset: str, subset: str | None = None, *, pool: str | None = None,
                 caption_idx: int = 0, num_samples: int | None = None, init: str = "pretrained", seed: int = 0,
                 qlora: bool = False, fmt: str = "pt", rows_fingerprint: str | None = None,
                 num_rows: int | None = None, compute_dtype: str | None = None) -> RunIdentity:
    """The identity of ``spec``'s file for these options; the last three only where the data and
    device are known (``featx extract``), else None (not compared)."""
    key = artifact_key(spec, dataset, subset, pool, caption_idx, fmt)
    random = spec.init == "random" or init == "random"
    return RunIdentity(dataset=key.dataset, subset=key.subset, num_samples=num_samples,
                       rows_fingerprint=rows_fingerprint, num_rows=num_rows, caption_idx=key.caption_idx,
                       pool=key.pool, init="random" if random else "pretrained", seed=seed if random else 0,
                       qlora=qlora and spec.modality == "language", compute_dtype=compute_dtype,
                       model_revision=spec.revision, format=fmt)


def judge(state: StoredState | None, wanted: RunIdentity) -> StoredState:
    """``state`` as this run sees it: a ``done`` file made with another identity is ``stale``."""
    if state is None:
        return StoredState("missing")
    if state.state != "done" or state.manifest is None:
        return state
    differences = wanted.differences(state.manifest.identity)
    if not differences:
        return state
    return replace(state, state="stale", reason="committed with other inputs: " + "; ".join(differences))
