"""Where a model's features live: the reference's file naming, plus manifest and failure names."""

from __future__ import annotations

from dataclasses import dataclass
from featx.catalog.spec import ModelSpec
from featx.errors import UsageError

FORMATS = ("pt", "safetensors")
MANIFEST_SUFFIX = ".manifest.json"
FAILURE_SUFFIX = ".failure.json"
POOLS = {"language": ("avg", "last", "max", "cls"), "vision": ("cls", "avg", "max")}
DEFAULT_POOL = {"language": "avg", "vision": "cls"}  # as the reference runs each modality


def pool_for(spec: ModelSpec, pool: str | None) -> str:
    """The pool a model is extracted with; a pool its modality lacks is refused before any work."""
    chosen = pool or DEFAULT_POOL[spec.modality]
    if chosen not in POOLS[spec.modality]:
        raise UsageError(f"--pool {chosen} is not defined for {spec.modality} model {spec.id}; "
                         f"use one of {', '.join(POOLS[spec.modality])} (or --modality to split the run)")
    return chosen



@dataclass(frozen=True)
class ArtifactKey:
    """``{dataset}/{subset}/{model}_pool-{pool}[_cid-{i}]`` as in platonic-rep's
    ``to_feature_filename`` (caption index only when non-zero; vision files never carry it)."""

    dataset: str
    subset: str
    model: str  # ModelSpec.file_name: '/' already replaced by '_'
    pool: str
    caption_idx: int = 0
    fmt: str = "pt"

    @property
    def stem(self) -> str:
        name = f"{self.model}_pool-{self.pool}" + (f"_cid-{self.caption_idx}" if self.caption_idx else "")
        return f"{self.dataset}/{self.subset}/{name}"

    @property
    def data(self) -> str:
        return f"{self.stem}.{self.fmt}"

    @property
    def manifest(self) -> str:
        return self.stem + MANIFEST_SUFFIX

    @property
    def failure(self) -> str:
        return self.stem + FAILURE_SUFFIX
