"""One store interface, the commit protocol written once over a few primitives.

Commit order: (0) remove killed writers' leftovers of this model; (1) drop any old manifest, so
nothing half-new can look done; (2) stage the data object under a temporary name (or as an
unfinished upload), its checksum verified; (3) publish it and write the manifest only if absent,
with SIGTERM/SIGINT held (``featx.signals.deferred``), so an interrupted commit leaves either a
temporary that is removed or a committed model; (4) clear the failure record.
A manifest whose size/etag (and, verified, sha256) match the data object is the only "done".
Two writers of one model: the last to publish the data object ends with its manifest in place (it
replaces a manifest that describes bytes it overwrote); the other is told ``CommittedByAnother``.
Backends implement the primitives: local directory (``local.py``) and S3 (``s3.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path

from featx import settings, signals
from featx.errors import FeatxError
from featx.store.keys import FAILURE_SUFFIX, FORMATS, MANIFEST_SUFFIX, ArtifactKey
from featx.store.manifest_cache import ManifestCache
from featx.store.records import FailureRecord, Manifest, StoredState


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # changes whenever the bytes change (S3 ETag; local size+mtime)


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class CommittedByAnother(FeatxError):
    """A concurrent writer of the same model published after this one: its commit stands."""


class Staged(ABC):
    """A data object written under a temporary name or as an unfinished upload: invisible until
    ``publish``, which takes one short step (a rename, a final PUT or multipart completion)."""

    @abstractmethod
    def publish(self) -> ObjectInfo:
        """Make the object visible under its key, whole."""

    @abstractmethod
    def discard(self) -> None:
        """Remove what was staged; nothing to do once published."""


def _barrier() -> None:
    """Tests only (``settings.TEST_COMMIT_BARRIER``): wait for the test to close its FIFO."""
    if settings.TEST_COMMIT_BARRIER:
        with open(settings.TEST_COMMIT_BARRIER, "rb") as fifo:
            fifo.read()


class Store(ABC):
    """A place for feature files: ``url`` names it for users and manifests (never secrets)."""

    url: str
    manifest_cache: ManifestCache | None = None  # backends set it from their ``manifest_cache`` option

    @abstractmethod
    def check(self, write: bool = False) -> None:
        """Fail fast, before any work, when the store cannot be reached (or, with ``write``,
        written: a probe object is put and deleted), so no model is extracted for nothing."""

    # -- primitives -------------------------------------------------------------------------
    @abstractmethod
    def stage_file(self, rel: str, src: Path, sha256: str) -> Staged:
        """Copy or upload ``src`` for ``rel``, not yet visible; the backend verifies ``sha256``."""

    @abstractmethod
    def remove_orphans(self, rels: list[str], grace_s: float) -> list[str]:
        """Remove what killed writers of ``rels`` left (temporaries, unfinished uploads): those
        older than ``grace_s`` seconds, or whose writer is known dead; returns what went."""

    def put_file(self, rel: str, src: Path, sha256: str) -> ObjectInfo:
        """Write ``src`` under ``rel`` atomically; the backend verifies ``sha256`` on the way."""
        staged = self.stage_file(rel, src, sha256)
        try:
            return staged.publish()
        finally:
            staged.discard()

    @abstractmethod
    def put_bytes_if_absent(self, rel: str, data: bytes) -> bool:
        """Write only if nothing is at ``rel``; False if something already is."""

    @abstractmethod
    def put_bytes(self, rel: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, rel: str) -> bytes | None: ...

    @abstractmethod
    def get_file(self, rel: str, dest: Path) -> None: ...

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove ``rel``; no error when it is absent."""

    @abstractmethod
    def list(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object under ``prefix`` (relative names) in one listing."""

    def fetch_manifest(self, rel: str, info: ObjectInfo) -> tuple[bytes, str] | None:
        """A manifest's bytes and the fingerprint they were read under (backends may prefetch)."""
        data = self.get_bytes(rel)
        return (data, info.etag) if data is not None else None

    def cacheable(self, data: bytes, etag: str) -> bool:
        """Whether ``data`` are the bytes ``etag`` names (a backend that can tell says so)."""
        return True

    def read_manifest(self, rel: str, info: ObjectInfo) -> Manifest | None:
        """Manifests never change once written: read through the on-disk ``manifest_cache``."""
        cache = self.manifest_cache
        cached = cache.get(rel, info.etag) if cache else None
        if cached is not None:
            with contextlib.suppress(ValueError, TypeError):
                return Manifest.from_json(cached)
        got = self.fetch_manifest(rel, info)
        if got is None:
            return None
        data, etag = got
        manifest = Manifest.from_json(data)
        if cache and self.cacheable(data, etag or info.etag):
            cache.put(rel, etag or info.etag, data)
        return manifest

    def prefetch_manifests(self, prefix: str, objects: dict[str, ObjectInfo]) -> None:
        """Called by ``scan`` with its listing before it reads manifests one by one; backends may
        fetch them in parallel, or from an index (S3)."""

    # -- protocol ---------------------------------------------------------------------------
    def commit(self, key: ArtifactKey, data_file: Path, manifest: Manifest) -> Manifest:
        """The protocol of the module docstring; raises ``CommittedByAnother`` when a concurrent
        writer's commit stands instead of this one."""
        self.remove_orphans([key.data, key.manifest, key.failure], settings.ORPHAN_GRACE_S)
        self.delete(key.manifest)
        for fmt in FORMATS:  # a file of this model in another format is another run's: never left beside
            if fmt != key.fmt:  # ours for a reader of the reference's paths to take as current
                self.delete(replace(key, fmt=fmt).data)
        staged = self.stage_file(key.data, data_file, manifest.sha256)
        try:
            with signals.deferred():
                info = staged.publish()
                manifest.etag, manifest.size = info.etag, info.size
                _barrier()
                if not self.put_bytes_if_absent(key.manifest, manifest.to_json()):
                    self._settle_race(key, info, manifest)
        finally:
            staged.discard()
        self.delete(key.failure)
        return manifest

    def _settle_race(self, key: ArtifactKey, ours: ObjectInfo, manifest: Manifest) -> None:
        """Another writer's manifest got in first. If the data object is still the one this writer
        published, that manifest describes bytes this writer overwrote: replace it. Otherwise the
        other writer published last and its commit stands. Should a third writer publish in
        between, the manifest is removed: the model is redone as ``missing``, never ``corrupt``."""
        if self.list(key.data).get(key.data) != ours:
            raise CommittedByAnother(f"{key.stem}: another writer committed this model first; its result stands")
        self.put_bytes(key.manifest, manifest.to_json())
        if self.list(key.data).get(key.data) != ours:
            self.delete(key.manifest)
            raise CommittedByAnother(f"{key.stem}: several writers committed this model at once; "
                                     "rerun `featx extract` to complete it")

    def record_failure(self, key: ArtifactKey, failure: FailureRecord) -> FailureRecord:
        old = self.get_bytes(key.failure)
        if old is not None:
            failure.attempt = FailureRecord.from_json(old).attempt + 1
        self.put_bytes(key.failure, failure.to_json())
        return failure

    def scan(self, prefix: str = "") -> dict[str, StoredState]:
        """State of every artifact stem under ``prefix``, from one listing."""
        objects = self.list(prefix)
        self.prefetch_manifests(prefix, objects)
        stems: dict[str, dict[str, str]] = {}
        for rel in objects:
            for suffix, kind in ((MANIFEST_SUFFIX, "manifest"), (FAILURE_SUFFIX, "failure"), (".pt", "data"),
                                 (".safetensors", "data")):
                if rel.endswith(suffix):
                    stems.setdefault(rel[: -len(suffix)], {})[kind] = rel
                    break
        return {stem: self._state(stem, parts, objects) for stem, parts in stems.items()}

    def _state(self, stem: str, parts: dict[str, str], objects: dict[str, ObjectInfo]) -> StoredState:
        failure = None
        if "failure" in parts:
            raw = self.get_bytes(parts["failure"])
            failure = FailureRecord.from_json(raw) if raw else None
        if "manifest" not in parts:
            if failure:
                return StoredState("failed", failure=failure, reason=failure.reason)
            return StoredState("missing", reason="data without manifest (interrupted run)" if "data" in parts else "")
        manifest = self.read_manifest(parts["manifest"], objects[parts["manifest"]])
        data = objects.get(manifest.data_key) if manifest else None
        if manifest is not None and manifest.stem != stem:
            return StoredState("corrupt", manifest, failure, f"manifest claims {manifest.data_key} of "
                               f"{manifest.model_id}: copied or mis-synced from another model's file")
        if manifest is None or data is None:
            return StoredState("corrupt", manifest, failure, "manifest without its data object")
        if data.size != manifest.size or (manifest.etag and data.etag != manifest.etag):
            return StoredState("corrupt", manifest, failure, "data object changed after commit (size/etag differ)")
        return StoredState("done", manifest, failure)

    def state(self, key: ArtifactKey) -> StoredState:
        return self.scan(key.stem).get(key.stem, StoredState("missing"))

    def verify(self, key: ArtifactKey, dest: Path) -> Manifest:
        """Download the data object to ``dest`` and check its sha256 against the manifest."""
        raw = self.get_bytes(key.manifest)
        if raw is None:
            raise FileNotFoundError(f"{key.stem} is not committed in {self.url}; run `featx extract` first")
        manifest = Manifest.from_json(raw)
        if manifest.data_key != key.data:
            raise ValueError(f"{key.manifest} in {self.url} claims {manifest.data_key} of {manifest.model_id}, "
                             f"not {key.data} (copied or mis-synced); re-extract with `featx extract`")
        self.get_file(manifest.data_key, dest)
        if sha256_file(dest) != manifest.sha256:
            dest.unlink(missing_ok=True)
            raise ValueError(f"{manifest.data_key} in {self.url} does not match its manifest's sha256 (corrupt); re-extract with `featx extract --force_remake`")
        return manifest
