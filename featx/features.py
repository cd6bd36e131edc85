"""Fetch committed features for analysis, verifying the checksum: ``featx.load(...)``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featx import settings
from featx.catalog import get_spec
from featx.pipeline.keys import artifact_key
from featx.store import ArtifactKey, Manifest, Store, open_store
from featx.store.formats import feature_layers, read_tensors


@dataclass
class Features:
    """A committed feature file: the reference's tensors and the manifest that commits them."""

    tensors: dict[str, Any]
    manifest: Manifest

    @property
    def feats(self) -> torch.Tensor | list[torch.Tensor]:
        """``[N, L, D]`` where all layers have one width; else a list of ``[N, C_l]`` (convnets)."""
        return self.tensors["feats"]

    @property
    def is_list(self) -> bool:
        """True when ``feats`` is the list form (layers of different widths)."""
        return isinstance(self.feats, list)

    @property
    def layers(self) -> list[torch.Tensor]:
        """One ``[N, C_l]`` tensor per layer, whichever form ``feats`` has."""
        return feature_layers(self.feats)


def load_key(store: Store, key: ArtifactKey, model_id: str | None = None) -> Features:
    """The file at ``key``, checksum verified; refused when its manifest belongs to another file
    or (given ``model_id``) to another model: a copied or mis-synced manifest never passes."""
    with tempfile.TemporaryDirectory(prefix="featx-load-") as tmp:
        dest = Path(tmp) / Path(key.data).name
        manifest = store.verify(key, dest)
        if model_id is not None and manifest.model_id != model_id:
            raise ValueError(f"{key.data} in {store.url} holds features of {manifest.model_id}, not {model_id} "
                             "(copied or mis-synced); re-extract it with `featx extract --force_remake`")
        return Features(read_tensors(dest, manifest.format), manifest)


def load(model: str, store: str | Store | None = None, *, dataset: str = settings.DEFAULT_DATASET,
         subset: str | None = None, pool: str | None = None, caption_idx: int = 0, fmt: str = "pt") -> Features:
    """Features of ``model`` from ``store`` (a URL, directory or Store), checked against the
    manifest's sha256. ``dataset``/``subset`` as given to ``featx extract`` (an HF id, ``prh``,
    featx-sample or a local path; subset None: that data set's default); ``pool`` defaults to avg
    for language models, cls for vision models with a class token and avg for the others."""
    st = store if isinstance(store, Store) else open_store(store)
    spec = get_spec(model)
    return load_key(st, artifact_key(spec, dataset, subset, pool, caption_idx, fmt), spec.id)
