"""The record a catalog entry becomes: everything planning, sizing and loading need to know."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from featx.errors import UsageError, clip

Modality = Literal["language", "vision"]
MODALITIES: tuple[str, ...] = ("language", "vision")
POOLS = {"language": ("avg", "last", "max", "cls"), "vision": ("cls", "avg", "max")}
DEFAULT_POOL = {"language": "avg", "vision": "cls"}  # as the reference runs each modality
POOL_CHOICES = ("avg", "cls", "last", "max")  # every pool some modality has: what ``--pool`` offers


@dataclass(frozen=True)
class ModelSpec:
    """One model as the catalog knows it.

    ``id`` is what users type and what names files: an HF repo id, a tagged timm name, or a local
    directory. ``source`` is what the loader builds (defaults to ``id``; smoke models point it at a
    real architecture). ``params``/``layers``/``hidden``/``vocab``/``intermediate``/``image_tokens``
    feed memory sizing without loading the model; ``config`` overrides the architecture's config
    (tiny random models). Vision models without a class token (convnets, hierarchical models,
    SigLIP) default to ``avg`` pooling and refuse ``cls``.
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
    image_tokens: int | None = None  # vision models whose name has no patch size: see sizing.image_tokens
    class_token: bool = True  # vision: False for models without one (convnets, SigLIP): no ``cls`` pool
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

    def pool_for(self, pool: str | None) -> str:
        """The pool this model is extracted with; a pool its modality (or a vision model without
        a class token) lacks is refused before any work."""
        no_cls = self.modality == "vision" and not self.class_token
        chosen = pool or ("avg" if no_cls else DEFAULT_POOL[self.modality])
        if no_cls and chosen == "cls":
            raise UsageError(f"{self.id} has no class token; use --pool avg or --pool max for it "
                             "(or --models to leave it out of a --pool cls run)")
        if chosen not in POOLS[self.modality]:
            raise UsageError(f"--pool {chosen} is not defined for {self.modality} model {self.id}; "
                             f"use one of {', '.join(POOLS[self.modality])} (or --modality to split the run)")
        return chosen

    def quantised(self, qlora: bool) -> bool:
        """Whether a ``--qlora`` run loads this model in 4-bit: language models only; the run's
        vision models load as usual, as the reference's ``--qlora`` runs them."""
        return qlora and self.modality == "language"

    def caption_for(self, caption_idx: int) -> int:
        """The caption index a model's file records: vision models read no caption, so always 0
        (the reference names vision files without it)."""
        return caption_idx if self.modality == "language" else 0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UsageError(
                f"unknown field(s) {clip(sorted(map(str, unknown)))} in model entry {clip(data.get('id'))}; "
                f"allowed: {sorted(known)}"
            )
        missing = [name for name in ("id", "modality", "family") if name not in data]
        if missing:
            raise UsageError(f"model entry {clip(data.get('id'))} lacks field(s) {missing}: a model the catalog "
                             "does not know needs id, modality and family")
        return cls(**data)
