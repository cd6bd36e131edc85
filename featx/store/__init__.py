"""Feature stores: a local directory or S3-compatible storage, one commit protocol."""

from __future__ import annotations

import re

from featx.errors import StoreError
from featx.store.base import ObjectInfo, Store, sha256_file
from featx.store.keys import ArtifactKey
from featx.store.records import FailureRecord, Manifest, StoredState


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")  # RFC 3986 scheme syntax


def open_store(store: str | None = None, output_dir: str | None = None, **s3_options) -> Store:
    """``--store s3://bucket/prefix`` or ``file://DIR``/a path, else ``--output_dir``.

    A local path that begins like a URL scheme (``s3:/bucket``, ``gs://b``, ``S3://b``) is
    refused rather than becoming a folder named ``s3:``: a local directory whose first part
    contains ':' is written ``./s3:dir``."""
    from featx import settings
    from featx.store.local import LocalStore

    url = store or output_dir or settings.DEFAULT_OUTPUT_DIR
    if url.startswith("s3://"):
        from featx.store.s3 import S3Store

        return S3Store.from_url(url, **s3_options)
    if url.startswith("file://"):
        if url == "file://":
            raise StoreError("file:// names no directory: use file:///abs/path or a plain path")
        return LocalStore(url.removeprefix("file://"))
    scheme = _SCHEME.match(url)
    if scheme:
        raise StoreError(_unsupported(url, scheme.group(1).lower()))
    return LocalStore(url)


def _unsupported(url: str, scheme: str) -> str:
    """The one-line fix for a store URL featx cannot use."""
    if scheme == "s3":
        return f"{url!r} is not an S3 URL: write s3://bucket/prefix (lower-case s3, two slashes)"
    if scheme in ("gs", "gcs"):
        return (f"{url!r}: featx writes S3-compatible storage; for Google Cloud Storage use "
                "--store s3://bucket/prefix --s3-endpoint https://storage.googleapis.com with HMAC keys")
    return (f"{url!r}: unsupported store scheme {scheme}: use s3://bucket/prefix or a local directory "
            f"(a directory whose name contains ':' is written ./{url})")


__all__ = ["ArtifactKey", "FailureRecord", "Manifest", "ObjectInfo", "Store", "StoredState", "open_store", "sha256_file"]
