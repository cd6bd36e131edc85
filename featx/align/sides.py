"""What each side of an alignment holds: ``--x``/``--y`` as a modality of the named models (or of
the models the store holds), a modelset name or file, or ``MODELSET:MODALITY``; each model with the
artifact key ``featx extract`` wrote, and the side's label in the output path. A ``.pt`` file or
a directory of them is a side of one's own features (a model under training), read as they are."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from featx.align.run import Entry, Side
from featx.catalog import load_modelset, resolve
from featx.catalog.spec import ModelSpec
from featx.errors import UsageError
from featx.pipeline.keys import artifact_key

MODALITY_WORDS = ("all", "language", "vision")
STORED_LABEL = "stored"  # the side's name when it is the store's own models


def side_label(name: str, modality: str) -> str:
    return name if modality == "all" else f"{name}-{modality}"


def models_label(ids: list[str]) -> str:
    return f"models{len(ids)}-{hashlib.sha1(' '.join(ids).encode()).hexdigest()[:8]}"


def _set_name(name: str) -> str:
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def _specs(value: str, modelset: str | None, models: list[str] | None,
           stored: Callable[[str], list[ModelSpec]]) -> tuple[str, str, list[ModelSpec]]:
    """(modelset name, modality, models) of a side."""
    if value in MODALITY_WORDS:
        if models:
            return models_label([s.id for s in resolve(None, models)]), value, resolve(None, models, value)
        if modelset:
            return _set_name(modelset), value, resolve(modelset, None, value)
        return STORED_LABEL, value, stored(value)
    name, modality = value, "all"
    head, sep, tail = value.rpartition(":")
    if sep and tail in MODALITY_WORDS:
        name, modality = head, tail
    elif sep:
        raise UsageError(f"--x/--y {value!r}: after ':' give language, vision or all")
    return _set_name(name), modality, load_modelset(name).select(modality)


def feature_files(value: str) -> list[Path] | None:
    """The ``.pt`` files ``value`` names (a file, or a directory holding some), else None."""
    path = Path(value)
    if value.endswith(".pt"):
        if not path.is_file():
            raise UsageError(f"--x/--y {value}: no such file; give a .pt feature file or a directory of them")
        return [path]
    files = sorted(path.glob("*.pt")) if path.is_dir() else []
    return files or None


def file_side(files: list[Path], value: str) -> Side:
    """A side of one's own feature files, named after the file or directory."""
    return Side(Path(value.rstrip("/")).stem or "files", None, [Entry(None, None, f) for f in files],
                modality="files")


def build_side(value: str, pool: str | None, modelset: str | None, models: list[str] | None,
               stored: Callable[[str, str | None], list[ModelSpec]], dataset: str, subset: str | None,
               caption_idx: int, fmt: str) -> Side:
    """One side; ``stored(modality, pool)`` lists the store's models when none are named."""
    files = feature_files(value)
    if files:
        return file_side(files, value)
    name, modality, specs = _specs(value, modelset, models, lambda modality: stored(modality, pool))
    specs = list({s.id: s for s in specs}.values())  # once each, order kept
    if not specs:
        raise UsageError(f"--x/--y {value!r} selects no models; check the modelset and modality")
    entries = [Entry(s, artifact_key(s, dataset, subset, pool, caption_idx, fmt)) for s in specs]
    pools = sorted({e.key.pool for e in entries})
    return Side(side_label(name, modality), pool or (pools[0] if len(pools) == 1 else "default"), entries,
                name, modality)
