"""The record a catalog entry becomes: everything planning, sizing and loading need to know."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Modality = Literal["language", "vision"]
MODALITIES: tuple[str, ...] = ("language", "vision")


@dataclass(frozen=True)
class ModelSpec:
    """One model as the catalog knows it.

    ``id`` is what users type and what names files: an HF repo id, a tagged timm name, or a local
    directory. ``source`` is what the loader builds (defaults to ``id``; smoke models point it at a
    real architecture). ``params``/``layers``/``hidden``/``vocab``/``intermediate`` feed memory
    sizing without loading the model; ``config`` overrides the architecture's config (tiny random
    models).
    """

    id: str
    modality: Modality
    family: str
    params: int = 0
    arch: str | None = None
    layers: int | None = None
    hidden: int | None = None
    vocab: int | None = None
    intermediate: int | None = None  # MLP width, where it is not 4 x hidden
    source: str | None = None
    revision: str | None = None
    gated: bool = False
    trust_remote_code: bool = False
    pad_token: str | None = None
    tokenizer: str | None = None
    init: Literal["pretrained", "random"] = "pretrained"
    config: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    @property
    def load_id(self) -> str:
        return self.source or self.id

    @property
    def file_name(self) -> str:
        """The model's part of a feature file name, as the reference writes it."""
        from pathlib import Path

        p = Path(self.id)
        name = p.name if p.is_absolute() or self.id.startswith(".") else self.id
        return name.replace("/", "_")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown field(s) {sorted(unknown)} in model entry {data.get('id')!r}; "
                f"allowed: {sorted(known)}"
            )
        return cls(**data)
