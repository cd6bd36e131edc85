"""Catalog as data: model entries in ``models/*.yaml``, modelsets in ``modelsets/*.yaml``.

Adding a model is adding a YAML entry; a modelset is a list of ids (or inline entries). Users
pass their own modelset file with ``--modelset path/to/set.yaml``. This module never imports
torch: planning and sizing run without it.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from featx.catalog.spec import MODALITIES, ModelSpec
from featx.errors import UsageError, clip
from featx.keyparts import check_key_part
from featx.yamlfile import read_yaml

_HERE = Path(__file__).parent
MODELS_DIR = _HERE / "models"
MODELSETS_DIR = _HERE / "modelsets"
_TIMM_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)?$")


@dataclass(frozen=True)
class Modelset:
    name: str
    description: str
    models: tuple[ModelSpec, ...]

    def select(self, modality: str = "all") -> list[ModelSpec]:
        return [m for m in self.models if modality == "all" or m.modality == modality]


@functools.cache
def catalog() -> dict[str, ModelSpec]:
    """Every model the catalog knows, by id."""
    out: dict[str, ModelSpec] = {}
    for path in sorted(MODELS_DIR.glob("*.yaml")):
        doc = read_yaml(path)
        defaults = doc.get("defaults", {})
        for entry in doc["models"]:
            spec = ModelSpec.from_dict({**defaults, **entry})
            if spec.id in out:
                raise ValueError(f"{path}: duplicate model id {spec.id!r}")
            out[spec.id] = spec
    return out


def builtin_modelsets() -> list[str]:
    return sorted(p.stem for p in MODELSETS_DIR.glob("*.yaml"))


def infer_spec(model_id: str) -> ModelSpec:
    """A spec for an id the catalog does not list: a local directory, an HF id or a timm name."""
    if os.path.isdir(model_id):  # os.path, not Path: a 10^6-entry modelset stats each id once
        path = Path(model_id)
        if (path / "config.json").exists():
            return ModelSpec(id=model_id, modality="language", family="local")
        raise UsageError(
            f"{model_id}: a local model must be a directory written by save_pretrained "
            "(config.json missing)"
        )
    check_model_id(model_id)
    if "/" in model_id:
        return ModelSpec(id=model_id, modality="language", family="unknown")
    if _TIMM_NAME.match(model_id):
        return ModelSpec(id=model_id, modality="vision", family=model_id.split("_")[0])
    raise UsageError(
        f"{clip(model_id)} is neither an HF repo id (org/name), a timm name nor a local directory; "
        "see `featx models` for known ids"
    )


def check_model_id(model_id: str) -> str:
    """A model id that is not a local directory must be a relative key (an HF repo id or a timm
    name): a path that does not exist, or one with '..', is refused before any work."""
    if model_id.startswith(("/", "./", "../", "~")) and not Path(model_id).expanduser().is_dir():
        raise UsageError(f"model {clip(model_id)}: no such local model directory; check the path")
    return check_key_part(model_id, "model id")


def get_spec(entry: str | dict[str, Any]) -> ModelSpec:
    if isinstance(entry, dict):
        known = catalog().get(entry.get("id", ""))
        base = known.to_dict() if known else {}
        spec = ModelSpec.from_dict({**base, **entry})
        if not Path(spec.id).is_dir():
            check_model_id(spec.id)
        return spec
    if not isinstance(entry, str):
        raise UsageError(f"model entry {clip(entry)} is neither an id nor a mapping with 'id'; see README, 'Your own modelset'")
    return catalog().get(entry) or infer_spec(entry)


def load_modelset(name: str) -> Modelset:
    """A built-in modelset by name, or a user's YAML file by path."""
    path = Path(name)
    if not (name.endswith((".yaml", ".yml")) or path.is_file()):
        path = MODELSETS_DIR / f"{name}.yaml"
        if not path.exists():
            raise UsageError(
                f"unknown modelset {name!r}; choose one of {', '.join(builtin_modelsets())} "
                "or pass a YAML file (see README, 'Your own modelset')"
            )
    elif not path.exists():
        raise UsageError(f"modelset file {name} does not exist; check the path")
    doc = read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise UsageError(f"{path}: a modelset file needs a top-level 'models:' list of ids")
    models = []
    for n, entry in enumerate(doc["models"], 1):
        try:
            models.append(get_spec(entry))
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
        except (TypeError, ValueError) as e:  # a field of the wrong type (id: [1], trust_remote_code: {})
            raise UsageError(f"{path}: entry {n} {clip(entry)}: {clip(str(e), 120, quote=False)}") from None
        if models[-1].modality not in MODALITIES:
            raise UsageError(f"{path}: model {clip(models[-1].id)} has modality "
                             f"{clip(models[-1].modality)}; use one of {MODALITIES}")
    counts = Counter(m.id for m in models)  # linear: a 10^6-entry file is checked in a second
    repeated = sorted(i for i, c in counts.items() if c > 1)
    if repeated:  # two entries of one id would be extracted twice, perhaps with different settings
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise UsageError(f"{path}: lists {', '.join(clip(r, quote=False) for r in repeated[:5])}{more} more than once; "
                         "keep one entry per model")
    return Modelset(str(doc.get("name", path.stem)), str(doc.get("description", "")), tuple(models))


def resolve(
    modelset: str | None = None, models: Iterable[str] | None = None, modality: str = "all"
) -> list[ModelSpec]:
    """The models a command works on: ``--models`` wins over ``--modelset``; order kept."""
    if modality not in ("all", *MODALITIES):
        raise UsageError(f"--modality {modality!r}: choose all, language or vision")
    if models:
        specs = [get_spec(m) for m in models]
    else:
        specs = list(load_modelset(modelset or "custom").models)
    return [s for s in specs if modality == "all" or s.modality == modality]
