"""Manifests cached on local disk, for any store backend.

A manifest is written once (only if absent) and never changed, so its bytes can be kept by
(store, key, the store's fingerprint of the object): after the first read, ``featx status`` of
1,000 models is one listing and no manifest reads. A re-commit writes a new manifest object with a
new fingerprint (S3 ETag; size + mtime locally), hence a new entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path


class ManifestCache:
    """``$FEATX_HOME/manifest-cache`` (or ``directory``), entries named by a hash of ``identity``
    (the store's endpoint and URL), the key and its fingerprint."""

    def __init__(self, directory: str | Path, identity: str):
        self.directory, self.identity = Path(directory), identity

    @classmethod
    def from_setting(cls, setting: str | Path | bool | None, identity: str) -> "ManifestCache | None":
        """A store's ``manifest_cache`` option: None/True for the default directory, False for none."""
        if setting is False:
            return None
        if setting is None or setting is True:
            from featx import settings

            setting = settings.FEATX_HOME / "manifest-cache"
        return cls(setting, identity)

    def _file(self, rel: str, etag: str) -> Path | None:
        if not etag:
            return None
        name = hashlib.sha256("\n".join((self.identity, rel, etag)).encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.json"

    def has(self, rel: str, etag: str) -> bool:
        path = self._file(rel, etag)
        return path is not None and path.is_file()

    def get(self, rel: str, etag: str) -> bytes | None:
        path = self._file(rel, etag)
        if path is None:
            return None
        with contextlib.suppress(OSError):
            return path.read_bytes()
        return None

    def put(self, rel: str, etag: str, data: bytes) -> None:
        path = self._file(rel, etag)
        if path is None:
            return
        with contextlib.suppress(OSError):  # a read-only home only loses the cache
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
