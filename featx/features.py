"""Fetch committed features for analysis, verifying the checksum: ``featx.load(...)``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx import settings
from featx.catalog import get_spec
from featx.pipeline.keys import artifact_key
from featx.store import ArtifactKey, Manifest, Store, open_store
from featx.store.formats import read_tensors


@dataclass
class Features:
    """A committed feature file: the reference's tensors and the manifest that commits them."""

    tensors: dict[str, Any]
    manifest: Manifest

    @property
    def feats(self):
        return self.tensors["feats"]


def load_key(store: Store, key: ArtifactKey) -> Features:
    with tempfile.TemporaryDirectory(prefix="featx-load-") as tmp:
        dest = Path(tmp) / Path(key.data).name
        manifest = store.verify(key, dest)
        return Features(read_tensors(dest, manifest.format), manifest)


def load(model: str, store: str | Store | None = None, *, dataset: str = settings.DEFAULT_DATASET,
         subset: str | None = None, pool: str | None = None, caption_idx: int = 0, fmt: str = "pt") -> Features:
    """Features of ``model`` from ``store`` (a URL, directory or Store), checked against the
    manifest's sha256. ``dataset``/``subset`` as given to ``featx extract`` (an HF id, ``prh``,
    featx-sample or a local path; subset None: that data set's default); ``pool`` defaults to avg
    for language and cls for vision models."""
    st = store if isinstance(store, Store) else open_store(store)
    return load_key(st, artifact_key(get_spec(model), dataset, subset, pool, caption_idx, fmt))
