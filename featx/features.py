"""Fetch committed features for analysis, verifying the checksum: ``featx.load(...)``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.catalog import get_spec
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


def load(model: str, store: str | Store | None = None, *, dataset: str = "minhuh/prh", subset: str = "wit_1024",
         pool: str | None = None, caption_idx: int = 0, fmt: str = "pt") -> Features:
    """Features of ``model`` from ``store`` (a URL, directory or Store), checked against the
    manifest's sha256. ``pool`` defaults to avg for language and cls for vision models."""
    from featx.store.keys import pool_for

    spec = get_spec(model)
    st = store if isinstance(store, Store) else open_store(store)
    key = ArtifactKey(dataset, subset, spec.file_name, pool_for(spec, pool),
                      caption_idx if spec.modality == "language" else 0, fmt)
    return load_key(st, key)
