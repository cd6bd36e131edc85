"""Local directory store: temporary name + fsync + rename, so a file is whole or absent.

Temporaries are ``.{name}.tmp-{host}-{pid}``: hidden from listings, unique per writer on a shared
file system, and telling the next commit of the model whether their writer is gone (a dead pid on
this host, or untouched for ``FEATX_ORPHAN_GRACE_S``), so that it removes only those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from featx.errors import StoreError, disk_full
from featx.processes import alive
from featx.store.base import ObjectInfo, Staged, Store, sha256_file
from featx.store.manifest_cache import ManifestCache

TMP_MARK = ".tmp-"
HOST = socket.gethostname()


def _info(path: Path) -> ObjectInfo:
    st = path.stat()
    return ObjectInfo(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


def _orphaned(path: Path, grace_s: float, now: float) -> bool:
    """A killed writer's temporary: untouched for ``grace_s``, or of a dead process on this host."""
    host, _, pid = path.name.rpartition(TMP_MARK)[2].rpartition("-")
    try:
        if now - path.stat().st_mtime > grace_s:
            return True
    except FileNotFoundError:
        return False  # its writer just renamed or removed it
    return host == HOST and pid.isdigit() and not alive(int(pid))


@dataclass
class _StagedFile(Staged):
    tmp: Path
    dest: Path

    def publish(self) -> ObjectInfo:
        info = _info(self.tmp)  # before the rename: a writer racing on ``dest`` may replace it at once
        os.replace(self.tmp, self.dest)
        return info

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class LocalStore(Store):
    """Features under a directory; ``manifest_cache`` as for ``S3Store`` (it pays off on network
    file systems)."""

    def __init__(self, root: str | Path, manifest_cache: str | Path | bool | None = None):
        self.root = Path(root).expanduser()
        self.url = str(self.root)
        self.manifest_cache = ManifestCache.from_setting(manifest_cache, str(self.root.resolve()))

    def check(self, write: bool = False) -> None:
        """With ``write``: create the directory if needed and write a probe file into it, then
        remove what the probe created, so a file in the way, a read-only or pseudo file system
        (``/proc``) fails in one line before any model is loaded."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"output directory {self.root} exists and is not a directory: choose another --output_dir")
        if not write:
            return
        created = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".featx-write-probe-", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            if full := disk_full(e, self.root):
                raise full from None
            raise StoreError(f"cannot write to output directory {self.root} ({e.strerror or type(e).__name__}): "
                             "choose a writable --output_dir") from None
        finally:
            for path in created:  # innermost first
                with contextlib.suppress(OSError):
                    path.rmdir()

    def _path(self, rel: str) -> Path:
        return self.root / rel

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.with_name(f".{path.name}{TMP_MARK}{HOST}-{os.getpid()}")

    def stage_file(self, rel: str, src: Path, sha256: str) -> Staged:
        dest = self._path(rel)
        staged = _StagedFile(self._tmp(dest), dest)
        try:
            shutil.copyfile(src, staged.tmp)
            with staged.tmp.open("rb+") as f:
                os.fsync(f.fileno())
            if sha256_file(staged.tmp) != sha256:
                raise OSError(f"{rel}: bytes changed while copying; retry")
        except BaseException as e:
            staged.discard()
            if full := disk_full(e, dest):
                raise full from None
            raise
        return staged

    def remove_orphans(self, rels: list[str], grace_s: float) -> list[str]:
        removed, now = [], time.time()
        for rel in rels:
            path = self._path(rel)
            if not path.parent.is_dir():
                continue
            prefix = f".{path.name}{TMP_MARK}"
            for tmp in path.parent.iterdir():
                if tmp.name.startswith(prefix) and _orphaned(tmp, grace_s, now):
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp.relative_to(self.root).as_posix())
        return removed

    def _write_tmp(self, dest: Path, data: bytes) -> Path:
        """``data`` in ``dest``'s temporary, synced; on any failure the temporary is gone."""
        tmp = self._tmp(dest)
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if full := disk_full(e, dest):
                raise full from None
            raise
        return tmp

    def put_bytes_if_absent(self, rel: str, data: bytes) -> bool:
        dest = self._path(rel)
        tmp = self._write_tmp(dest, data)
        try:
            os.link(tmp, dest)  # atomic, fails if dest exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, rel: str, data: bytes) -> None:
        dest = self._path(rel)
        os.replace(self._write_tmp(dest, data), dest)

    def get_bytes(self, rel: str) -> bytes | None:
        try:
            return self._path(rel).read_bytes()
        except FileNotFoundError:
            return None

    def get_file(self, rel: str, dest: Path) -> None:
        shutil.copyfile(self._path(rel), dest)

    def sha256_of(self, rel: str, progress: Callable[[int], None] = lambda n: None) -> str:
        return sha256_file(self._path(rel), progress=progress)

    def delete(self, rel: str) -> None:
        self._path(rel).unlink(missing_ok=True)

    def list(self, prefix: str) -> dict[str, ObjectInfo]:
        base = self._path(prefix)
        top = base if base.is_dir() else base.parent
        if not top.is_dir():
            return {}
        out = {}
        for path in top.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and rel.startswith(prefix) and not path.name.startswith("."):
                out[rel] = _info(path)
        return out
