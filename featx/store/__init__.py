"""Feature stores: a local directory or S3-compatible storage, one commit protocol."""

from __future__ import annotations

from featx.store.base import ObjectInfo, Store, sha256_file
from featx.store.keys import ArtifactKey
from featx.store.records import FailureRecord, Manifest, StoredState


def open_store(store: str | None = None, output_dir: str | None = None, **s3_options) -> Store:
    """``--store s3://bucket/prefix`` or ``file://DIR``/a path, else ``--output_dir``."""
    from featx import settings
    from featx.store.local import LocalStore

    url = store or output_dir or settings.DEFAULT_OUTPUT_DIR
    if url.startswith("s3://"):
        from featx.store.s3 import S3Store

        return S3Store.from_url(url, **s3_options)
    return LocalStore(url.removeprefix("file://"))


__all__ = ["ArtifactKey", "FailureRecord", "Manifest", "ObjectInfo", "Store", "StoredState", "open_store", "sha256_file"]
