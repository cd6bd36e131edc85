"""Where a model's features live: the reference's file naming, plus manifest and failure names."""

from __future__ import annotations

from dataclasses import dataclass

from featx.keyparts import check_key_part

FORMATS = ("pt", "safetensors")
MANIFEST_SUFFIX = ".manifest.json"
FAILURE_SUFFIX = ".failure.json"


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

    def __post_init__(self) -> None:
        for what, value in (("--dataset name", self.dataset), ("--subset", self.subset),
                            ("model file name", self.model), ("--pool", self.pool)):
            check_key_part(value, what)

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
