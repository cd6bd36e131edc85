"""The one rule that names a model's artifact: data-set naming, pool default and the
caption-index rule together, so ``extract``, ``status``, ``align``, the controller and
``featx.load`` all read and write the same key."""

from __future__ import annotations

from featx.catalog.spec import ModelSpec
from featx.data.datasets import dataset_naming
from featx.store.keys import ArtifactKey


def artifact_key(spec: ModelSpec, dataset: str, subset: str | None = None, pool: str | None = None,
                 caption_idx: int = 0, fmt: str = "pt") -> ArtifactKey:
    """Key of ``spec``'s features on ``dataset`` (an HF id, an alias such as ``prh``, featx-sample
    or a local path) at ``subset`` (None: the data set's default)."""
    name, subset = dataset_naming(dataset, subset)
    return ArtifactKey(name, subset, spec.file_name, spec.pool_for(pool), spec.caption_for(caption_idx), fmt)


def dataset_prefix(dataset: str, subset: str | None = None) -> str:
    """Store prefix holding every artifact of ``dataset``/``subset`` (what one scan lists)."""
    name, subset = dataset_naming(dataset, subset)
    return f"{name}/{subset}/"
