"""Where a model's features live: the reference's file naming, plus manifest and failure names."""

from __future__ import annotations

from dataclasses import dataclass, replace

from featx.keyparts import check_key_part

FORMATS = ("pt", "safetensors")
MANIFEST_SUFFIX = ".manifest.json"
FAILURE_SUFFIX = ".failure.json"
SHARD_PREFIX = "shard-"


def shard_name(index: int, num_shards: int) -> str:
    """``shard-00003-of-00128``: the name ``datasets``' and the Hub's sharded files use."""
    return f"{SHARD_PREFIX}{index:05d}-of-{num_shards:05d}"


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
    shard_index: int | None = None  # a row shard's key: {stem}/shard-00003-of-00128.{fmt}
    num_shards: int | None = None

    def __post_init__(self) -> None:
        for what, value in (("--dataset name", self.dataset), ("--subset", self.subset),
                            ("model file name", self.model), ("--pool", self.pool)):
            check_key_part(value, what)

    @property
    def model_stem(self) -> str:
        """The model's stem, whether this key is the model's one file or one of its shards."""
        name = f"{self.model}_pool-{self.pool}" + (f"_cid-{self.caption_idx}" if self.caption_idx else "")
        return f"{self.dataset}/{self.subset}/{name}"

    @property
    def stem(self) -> str:
        if self.num_shards is None:
            return self.model_stem
        return f"{self.model_stem}/{shard_name(self.shard_index or 0, self.num_shards)}"

    def shard(self, index: int, num_shards: int) -> "ArtifactKey":
        """The key of row shard ``index`` of ``num_shards`` of this model."""
        return replace(self, shard_index=index, num_shards=num_shards)

    @property
    def data(self) -> str:
        return f"{self.stem}.{self.fmt}"

    @property
    def manifest(self) -> str:
        return self.stem + MANIFEST_SUFFIX

    @property
    def failure(self) -> str:
        return self.stem + FAILURE_SUFFIX
