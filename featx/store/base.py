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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from featx import settings, signals
from featx.errors import FeatxError
from featx.store.keys import FAILURE_SUFFIX, FORMATS, MANIFEST_SUFFIX, ArtifactKey
from featx.store.manifest_cache import ManifestCache
from featx.store.records import MAX_RECORD_BYTES, FailureRecord, Manifest, RecordError, StoredState


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # changes whenever the bytes change (S3 ETag; local size+mtime)


def sha256_file(path: Path, chunk: int = 8 << 20, progress: Callable[[int], None] = lambda n: None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            progress(len(block))
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
    verify_workers = 1  # data objects hashed at once by ``verify_states`` (a disk reads best in order)

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
    def sha256_of(self, rel: str, progress: Callable[[int], None] = lambda n: None) -> str:
        """The sha256 of the object at ``rel``, read whole (``progress`` gets each chunk's bytes);
        ``FileNotFoundError`` when it is gone."""

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
        """Manifests never change once written: read through the on-disk ``manifest_cache``.
        ``RecordError`` when the object is not a manifest featx could have written."""
        if info.size > MAX_RECORD_BYTES:  # refused unread: no listing entry makes featx fetch a GiB
            raise RecordError(f"{info.size} bytes, more than any manifest featx writes")
        cache = self.manifest_cache
        cached = cache.get(rel, info.etag) if cache else None
        if cached is not None:
            with contextlib.suppress(RecordError):
                return Manifest.from_json(cached)
        got = self.fetch_manifest(rel, info)
        if got is None:
            return None
        data, etag = got
        manifest = Manifest.from_json(data)
        if cache and self.cacheable(data, etag or info.etag):
            cache.put(rel, etag or info.etag, data)
        return manifest

    def read_failure(self, rel: str, info: ObjectInfo | None = None) -> FailureRecord | None:
        """The failure record at ``rel`` (None when absent); ``RecordError`` when unreadable."""
        if info is not None and info.size > MAX_RECORD_BYTES:
            raise RecordError(f"{info.size} bytes, more than any failure record featx writes")
        try:
            raw = self.get_bytes(rel)
        except (IsADirectoryError, PermissionError) as e:  # local: something else under the name
            raise RecordError(e.strerror or type(e).__name__) from None
        return FailureRecord.from_json(raw) if raw is not None else None

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
                try:
                    written = self.put_bytes_if_absent(key.manifest, manifest.to_json())
                except BaseException:  # disk full, store down: never leave a data object without its manifest
                    self._unpublish(key.data, info)
                    raise
                if not written:
                    self._settle_race(key, info, manifest)
        finally:
            staged.discard()
        self.delete(key.failure)
        return manifest

    def _unpublish(self, rel: str, ours: ObjectInfo) -> None:
        """Remove the data object this commit published if it still is ours (best effort: one
        that stays is a data file without a manifest, ``missing``, never ``done``)."""
        with contextlib.suppress(FeatxError, OSError):
            if self.list(rel).get(rel) == ours:
                self.delete(rel)

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
        with contextlib.suppress(RecordError):  # an unreadable record is replaced, counting from 1
            old = self.read_failure(key.failure)
            if old is not None:
                failure.attempt = old.attempt + 1
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
        """One stem's state. Bytes under a record's name that are no such record make it
        ``corrupt`` with the reason (``extract`` redoes it), never an exception: one foreign or
        damaged object must not stop a scan of the others."""
        failure, unreadable = None, ""
        if "failure" in parts:
            try:
                failure = self.read_failure(parts["failure"], objects[parts["failure"]])
            except RecordError as e:
                unreadable = f"unreadable failure record {parts['failure']}: {e}"
        if "manifest" not in parts:
            if failure:
                return StoredState("failed", failure=failure, reason=failure.reason)
            if unreadable:
                return StoredState("corrupt", reason=unreadable)
            return StoredState("missing", reason="data without manifest (interrupted run)" if "data" in parts else "")
        try:
            manifest = self.read_manifest(parts["manifest"], objects[parts["manifest"]])
        except RecordError as e:
            return StoredState("corrupt", failure=failure, reason=f"unreadable manifest {parts['manifest']}: {e}")
        data = objects.get(manifest.data_key) if manifest else None
        if manifest is not None and manifest.stem != stem:
            return StoredState("corrupt", manifest, failure, f"manifest claims {manifest.data_key} of "
                               f"{manifest.model_id}: copied or mis-synced from another model's file")
        if manifest is None or data is None:
            return StoredState("corrupt", manifest, failure, "manifest without its data object")
        if data.size != manifest.size or (manifest.etag and data.etag != manifest.etag):
            return StoredState("corrupt", manifest, failure, "data object changed after commit (size/etag differ)")
        return StoredState("done", manifest, failure)

    def verify_states(self, states: dict[str, StoredState], stems: Iterable[str],
                      progress: Callable[[int], None] = lambda n: None) -> dict[str, StoredState]:
        """``states`` with every ``done`` one of ``stems`` checked byte for byte: its data object
        read and hashed (``verify_workers`` at a time); one whose sha256 is not the manifest's is
        ``corrupt``. What a listing cannot see (a flipped bit, same size and mtime) shows here."""
        todo = [s for s in dict.fromkeys(stems) if s in states and states[s].state == "done"]

        def check(stem: str) -> tuple[str, StoredState]:
            st = states[stem]
            assert st.manifest is not None
            try:
                sha = self.sha256_of(st.manifest.data_key, progress)
            except FileNotFoundError:
                return stem, replace(st, state="corrupt", reason="data object vanished while it was verified")
            if sha == st.manifest.sha256:
                return stem, st
            return stem, replace(st, state="corrupt", reason=f"data object's sha256 {sha[:12]} is not the manifest's "
                                                              f"{st.manifest.sha256[:12]} (bytes changed after commit)")

        with ThreadPoolExecutor(max(1, min(self.verify_workers, len(todo)))) as pool:
            return {**states, **dict(pool.map(check, todo))}

    def state(self, key: ArtifactKey) -> StoredState:
        return self.scan(key.stem).get(key.stem, StoredState("missing"))

    def verify(self, key: ArtifactKey, dest: Path) -> Manifest:
        """Download the data object to ``dest`` and check its sha256 against the manifest."""
        raw = self.get_bytes(key.manifest)
        if raw is None:
            raise FileNotFoundError(f"{key.stem} is not committed in {self.url}; run `featx extract` first")
        try:
            manifest = Manifest.from_json(raw)
        except RecordError as e:
            raise ValueError(f"{key.manifest} in {self.url} is not a manifest featx wrote ({e}); re-extract with "
                             "`featx extract --force_remake`") from None
        if manifest.data_key != key.data:
            raise ValueError(f"{key.manifest} in {self.url} claims {manifest.data_key} of {manifest.model_id}, "
                             f"not {key.data} (copied or mis-synced); re-extract with `featx extract`")
        self.get_file(manifest.data_key, dest)
        if sha256_file(dest) != manifest.sha256:
            dest.unlink(missing_ok=True)
            raise ValueError(f"{manifest.data_key} in {self.url} does not match its manifest's sha256 (corrupt); re-extract with `featx extract --force_remake`")
        return manifest
