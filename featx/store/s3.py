"""S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph, CoreWeave...) over boto3.

The commit protocol lives in ``base.Store``; this module supplies its primitives so that:

* a data object becomes visible only whole and with the checksum the server verified: a single
  PUT with ``Content-MD5`` and ``x-amz-checksum-sha256`` (the sha256 the manifest will record), or
  a multipart upload whose parts each carry their ``Content-MD5`` and which is aborted on any
  failure or signal (a killed process leaves only an invisible, unfinished upload; the next
  commit of the model aborts it once it is ``FEATX_ORPHAN_GRACE_S`` old);
* a manifest is written only if absent (``If-None-Match: *``);
* ``featx status`` of 1,000 models is one listing plus zero GETs once manifests are cached
  (``featx.store.manifest_cache``), and one listing plus one
  GET on a machine that never saw them (a per-folder manifest index, verified against the
  listing: see "manifest index" below).

Endpoint, region and credentials come from the usual AWS variables and profiles
(``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_REGION``/``AWS_DEFAULT_REGION``); an explicit ``endpoint_url`` (``--s3-endpoint``) wins.
Nothing secret is ever put in ``url``, a message or a manifest.

About 610 lines on purpose: one backend's S3 calls, its error table, its transfer paths (single
PUT, multipart upload, ranged parallel GET) and its manifest index (parallel GETs and the
per-folder index object, verified against the listing's ETags) share the client, the key mapping
and the error translation; the manifest cache and the commit protocol live elsewhere
(``manifest_cache``, ``base``).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import os
import re
import tempfile
import threading
import uuid
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from featx.errors import FeatxError, StoreError, TransientError, clip
from featx.keyparts import check_prefix
from featx.store.base import ObjectInfo, Staged, Store
from featx.store.keys import MANIFEST_SUFFIX
from featx.store.manifest_cache import ManifestCache
from featx.store.records import MAX_RECORD_BYTES

MiB = 1 << 20
PART_SIZE = 64 * MiB  # multipart part size (S3 allows 5 MiB .. 5 GiB, at most 10,000 parts)
MULTIPART_THRESHOLD = 64 * MiB  # files at least this large go multipart, in parallel parts
MAX_WORKERS = 8  # parallel parts per upload/download (memory: about (workers + 1) x part size)
SCAN_WORKERS = 16  # parallel manifest GETs of a cold scan (small objects: latency-bound)
# check() (the first request of extract and status): an endpoint that is down, or that accepts
# connections and never answers, fails within CHECK_RETRIES + 1 times (connect + read timeout),
# 2 x (5 + 20) = 50 s (the README's total), plus at most 2 s of retry back-off.
CHECK_CONNECT_TIMEOUT_S = 5
CHECK_READ_TIMEOUT_S = 20
CHECK_RETRIES = 1
# urllib3 sends request bodies under the *connect* timeout, so for transfers it is also how long
# a busy server may stall a 64 MiB part before the send is cut (3 s dropped parts under load).
CONNECT_TIMEOUT_S = 15
READ_TIMEOUT_S = 120
RETRIES = 4  # botocore "standard" retry mode (throttling, 5xx, resets, timeouts): 5 attempts a request

# -- one table from S3 error codes to featx errors (``{url}``, ``{endpoint}``, ``{bucket}``) ------
_ACCESS_DENIED = ("{url}: access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                  "(or AWS_PROFILE) for this endpoint")
_NO_BUCKET = "bucket {bucket} does not exist at {endpoint}: create it or fix --store"
_UNREACHABLE = ("cannot reach S3 endpoint {endpoint} for {url}: retry later, or check --s3-endpoint / "
                "AWS_ENDPOINT_URL")
_READ_ONLY = ("{url}: these credentials may read but not write (a probe PutObject was denied): use an "
              "identity with write access to the bucket and prefix")
# S3's rules for bucket names (3-63 lower-case letters, digits, '.', '-'; not an IP address)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_ERROR_CODES: dict[str, tuple[type[FeatxError], str]] = {
    **{code: (StoreError, _ACCESS_DENIED) for code in (
        "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken",
        "ExpiredToken", "InvalidClientTokenId", "AllAccessDisabled")},
    "NoSuchBucket": (StoreError, _NO_BUCKET),
    "InvalidBucketName": (StoreError, "{url}: {bucket} is not a valid bucket name: fix --store"),
    "BadDigest": (TransientError, "{url}: {key}: the server rejected the upload's checksum "
                                  "(bytes changed in transit); retry"),
    "InvalidDigest": (TransientError, "{url}: {key}: the server rejected the upload's checksum; retry"),
}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _md5_b64(data: bytes | memoryview) -> str:
    return _b64(hashlib.md5(data, usedforsecurity=False).digest())


def _public_endpoint(url: str | None) -> str:
    """The endpoint without any ``user:password@`` part, for messages."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url.rstrip("/")
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])).rstrip("/")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    return int(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3Store(Store):
    """Features under ``s3://bucket/prefix``; see the module docstring for the guarantees.

    ``client`` is a boto3 S3 client (``from_url`` builds one from the AWS environment);
    ``manifest_cache`` is a directory (default ``$FEATX_HOME/manifest-cache``), ``False`` to disable.
    """

    verify_workers = MAX_WORKERS  # objects hashed at once by ``verify_states``: latency-bound GETs

    def __init__(self, bucket: str, prefix: str = "", *, client: Any, part_size: int = PART_SIZE,
                 multipart_threshold: int = MULTIPART_THRESHOLD, max_workers: int = MAX_WORKERS,
                 manifest_cache: str | Path | bool | None = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client
        self._check_client: Any = lambda: client  # from_url: a client with few retries, made on demand
        self.endpoint = _public_endpoint(client.meta.endpoint_url)
        self.part_size, self.multipart_threshold = max(part_size, 5 * MiB), multipart_threshold
        self.max_workers = max(1, max_workers)
        self.manifest_cache = ManifestCache.from_setting(manifest_cache, f"{self.endpoint}\n{self.url}")
        self._prefetched: dict[tuple[str, str], tuple[bytes, str]] = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None, region: str | None = None, *,
                 connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
                 retries: int = RETRIES, **options: Any) -> "S3Store":
        """``s3://bucket[/prefix]`` with endpoint/region/credentials from the AWS environment;
        ``endpoint_url`` (``--s3-endpoint``) and ``region`` override it. Timeouts and retries
        bound every request (the controller, which moves no large objects, uses tighter ones).
        ``options`` go to the constructor (``part_size``, ``max_workers``, ``manifest_cache``...)."""
        bucket, prefix = parse_url(url)
        workers = max(1, int(options.get("max_workers", MAX_WORKERS)))
        client = _make_client(endpoint_url, region, pool=max(workers, SCAN_WORKERS) + 4, retries=retries,
                              connect_timeout=connect_timeout, read_timeout=read_timeout)
        store = cls(bucket, prefix, client=client, **options)
        store._check_client = lambda: _make_client(endpoint_url, region, pool=2, retries=min(retries, CHECK_RETRIES),
                                                   connect_timeout=min(connect_timeout, CHECK_CONNECT_TIMEOUT_S),
                                                   read_timeout=min(read_timeout, CHECK_READ_TIMEOUT_S))
        return store

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    # -- errors ------------------------------------------------------------------------------
    def _translate(self, exc: Exception, key: str = "") -> FeatxError:
        import botocore.exceptions as bce

        fill = {"url": self.url, "endpoint": self.endpoint, "bucket": self.bucket, "key": key}
        if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ProxyConnectionError)):
            return TransientError(_UNREACHABLE.format(**fill))
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return StoreError(f"{self.url}: no AWS credentials found: set AWS_ACCESS_KEY_ID/"
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(exc, bce.ReadTimeoutError):
            return TransientError(f"S3 endpoint {self.endpoint} accepted the connection but did not answer for "
                                  f"{key or self.url} (read timeout, retried): retry later, or check --s3-endpoint / "
                                  "AWS_ENDPOINT_URL")
        if isinstance(exc, bce.BotoCoreError):  # closed connections, SSL...: may pass on retry
            return TransientError(f"{self.url}: {key or self.endpoint}: {type(exc).__name__}; retry")
        code = _error_code(exc)
        kind, text = _ERROR_CODES.get(code, (None, ""))
        if kind is not None:
            return kind(text.format(**fill))
        message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", "")).splitlines()
        detail = f"{code}" + (f": {message[0]}" if message and message[0] else "")
        return TransientError(f"{self.url}: {key}: S3 error {detail or _status(exc)}; retry")

    @contextlib.contextmanager
    def _errors(self, key: str = "") -> Iterator[None]:
        import botocore.exceptions as bce

        try:
            yield
        except (bce.BotoCoreError, bce.ClientError) as exc:
            raise self._translate(exc, key) from exc

    def check(self, write: bool = False) -> None:
        """HeadBucket: fail fast (one line, no retries to speak of) on wrong credentials, a
        missing bucket or an unreachable endpoint, before any extraction starts; with ``write``,
        put and delete a probe object, so read-only credentials fail before any model loads."""
        import botocore.exceptions as bce

        client = self._check_client()
        try:
            client.head_bucket(Bucket=self.bucket)
            if write:
                probe = self._key(f".featx-write-probe-{uuid.uuid4().hex}")
                try:
                    client.put_object(Bucket=self.bucket, Key=probe, Body=b"", ContentMD5=_md5_b64(b""))
                except bce.ClientError as exc:
                    if _error_code(exc) in ("AccessDenied", "403"):  # HeadBucket passed: the keys are valid
                        raise StoreError(_READ_ONLY.format(url=self.url)) from exc
                    raise
                client.delete_object(Bucket=self.bucket, Key=probe)
        except bce.ClientError as exc:
            if _error_code(exc) in ("404", "NotFound", "NoSuchBucket"):
                raise StoreError(_NO_BUCKET.format(bucket=self.bucket, endpoint=self.endpoint)) from exc
            raise self._translate(exc) from exc
        except bce.BotoCoreError as exc:
            raise self._translate(exc) from exc

    # -- primitives --------------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def stage_file(self, rel: str, src: Path, sha256: str) -> Staged:
        size = Path(src).stat().st_size
        if size < self.multipart_threshold:
            data = Path(src).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise TransientError(f"{src}: bytes changed since they were hashed; retry")
            return _SinglePut(self, self._key(rel), data, sha256)
        return self._stage_multipart(rel, Path(src), sha256, size)

    def remove_orphans(self, rels: list[str], grace_s: float) -> list[str]:
        """Abort unfinished uploads of ``rels`` started more than ``grace_s`` ago (a killed writer's;
        a younger one may be a live writer's: it is invisible and only costs storage until then).
        Best effort: a store that refuses the listing keeps them."""
        removed = []
        with contextlib.suppress(Exception):
            for rel in rels:
                key = self._key(rel)
                listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
                for upload in listing.get("Uploads", []):
                    if upload.get("Key") == key and _age_s(upload.get("Initiated")) > grace_s:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
                        removed.append(f"{rel} (upload {upload['UploadId']})")
        return removed

    def _stage_multipart(self, rel: str, src: Path, sha256: str, size: int) -> Staged:
        """Parts read in order (sha256 over the whole file on the way), uploaded in parallel with
        at most ``max_workers + 1`` parts in memory; any failure (or a signal) aborts the upload."""
        key = self._key(rel)
        part_size = max(self.part_size, -(-size // 10_000))
        with self._errors(key):
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        staged = _Multipart(self, key, upload_id, size)
        slots, failed = threading.BoundedSemaphore(self.max_workers + 1), threading.Event()
        digest = hashlib.sha256()

        def send(number: int, body: bytes) -> dict[str, Any]:
            try:
                resp = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                               Body=body, ContentMD5=_md5_b64(body))
                return {"PartNumber": number, "ETag": resp["ETag"]}
            except BaseException:
                failed.set()
                raise
            finally:
                slots.release()

        pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="featx-s3-put")
        futures: list[Future] = []
        try:
            with src.open("rb") as f, self._errors(key):
                for number in range(1, -(-size // part_size) + 1):
                    slots.acquire()
                    if failed.is_set():
                        break
                    body = f.read(part_size)
                    digest.update(body)
                    futures.append(pool.submit(send, number, body))
                staged.parts = [fut.result() for fut in futures]
                if f.read(1) or digest.hexdigest() != sha256:
                    raise TransientError(f"{src}: bytes changed since they were hashed; retry")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            staged.discard()
            raise
        pool.shutdown()
        return staged

    def _put(self, rel: str, data: bytes, **extra: Any) -> dict[str, Any]:
        return self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data,
                                      ContentMD5=_md5_b64(data), **extra)

    def put_bytes_if_absent(self, rel: str, data: bytes) -> bool:
        import botocore.exceptions as bce

        with self._errors(self._key(rel)):
            try:
                self._put(rel, data, IfNoneMatch="*")
            except bce.ClientError as exc:
                if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") \
                        or _status(exc) in (409, 412):
                    return False
                raise
        return True

    def put_bytes(self, rel: str, data: bytes) -> None:
        with self._errors(self._key(rel)):
            self._put(rel, data)

    def _get(self, key: str) -> tuple[bytes, str] | None:
        import botocore.exceptions as bce

        with self._errors(key):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise
            return resp["Body"].read(), resp.get("ETag", "").strip('"')

    def get_bytes(self, rel: str) -> bytes | None:
        got = self._get(self._key(rel))
        return got[0] if got else None

    def get_file(self, rel: str, dest: Path) -> None:
        """Download to ``dest`` (written under a temporary name, then renamed), in parallel
        ranges pinned to one ETag so an object replaced mid-download fails instead of mixing."""
        import botocore.exceptions as bce

        key, dest = self._key(rel), Path(dest)
        with self._errors(key):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    raise FileNotFoundError(f"{rel} is missing in {self.url}") from None
                raise
        size, etag = head["ContentLength"], head["ETag"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            ranges = [(start, min(start + self.part_size, size) - 1) for start in range(0, size, self.part_size)]

            def fetch(first: int, last: int) -> None:
                resp = self.client.get_object(Bucket=self.bucket, Key=key, IfMatch=etag, Range=f"bytes={first}-{last}")
                body, offset = resp["Body"], first
                while chunk := body.read(8 * MiB):
                    os.pwrite(fd, chunk, offset)
                    offset += len(chunk)
                if offset != last + 1:
                    raise TransientError(f"{self.url}: {key}: short read; retry")

            with self._errors(key), ThreadPoolExecutor(self.max_workers, thread_name_prefix="featx-s3-get") as pool:
                for fut in [pool.submit(fetch, first, last) for first, last in ranges]:
                    fut.result()
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def sha256_of(self, rel: str, progress: Callable[[int], None] = lambda n: None) -> str:
        """One streamed GET, hashed as it arrives (no temporary file)."""
        import botocore.exceptions as bce

        key, digest = self._key(rel), hashlib.sha256()
        with self._errors(key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except bce.ClientError as exc:
                if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                    raise FileNotFoundError(f"{rel} is missing in {self.url}") from None
                raise
            while chunk := body.read(8 * MiB):
                digest.update(chunk)
                progress(len(chunk))
        return digest.hexdigest()

    def delete(self, rel: str) -> None:
        import botocore.exceptions as bce

        key = self._key(rel)
        with self._errors(key):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except bce.ClientError as exc:
                if _error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                    raise

    def list(self, prefix: str) -> dict[str, ObjectInfo]:
        """One paginated ListObjectsV2 (1,000 keys a page) of everything under ``prefix``."""
        start = len(self._key(""))
        out: dict[str, ObjectInfo] = {}
        with self._errors(self._key(prefix)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix), PaginationConfig={"PageSize": 1000})
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][start:]] = ObjectInfo(obj["Size"], obj["ETag"].strip('"'))
        return out

    def prefetch_manifests(self, prefix: str, objects: dict[str, ObjectInfo]) -> None:
        """Fetch the listed manifests that are not in the local cache before ``scan`` reads them:
        from their folder's index when there are many, the rest by GETs in parallel
        (``SCAN_WORKERS`` at a time); then rewrite the indexes this listing shows stale."""
        self._prefetched = {}
        manifests = {rel: info for rel, info in objects.items()
                     if rel.endswith(MANIFEST_SUFFIX) and info.size <= MAX_RECORD_BYTES}  # larger: refused unread
        cache = self.manifest_cache
        todo = {rel: info for rel, info in manifests.items() if not (cache and cache.has(rel, info.etag))}
        indexes = _indexes_by_folder(objects)
        stale: set[str] = set()
        if len(todo) >= INDEX_MIN:
            for folder, listed in indexes.items():
                found = self._read_index(_pick_index(listed, manifests, folder), manifests)
                self._prefetched.update(found)
                if any(_folder(rel) == folder and (rel, info.etag) not in found for rel, info in manifests.items()):
                    stale.add(folder)  # a newer commit, or an entry that failed verification
        missing = [(rel, info) for rel, info in todo.items() if (rel, info.etag) not in self._prefetched]
        if missing:
            def fetch(item: tuple[str, ObjectInfo]) -> None:
                rel, info = item
                got = self._get(self._key(rel))
                if got is not None:
                    self._prefetched[(rel, info.etag)] = got

            with ThreadPoolExecutor(min(SCAN_WORKERS, len(missing)), thread_name_prefix="featx-s3-scan") as pool:
                list(pool.map(fetch, missing))
        for folder, members in _whole_folders(prefix, manifests).items():
            self._refresh_index(folder, members, indexes.get(folder, []), folder in stale)

    def fetch_manifest(self, rel: str, info: ObjectInfo) -> tuple[bytes, str] | None:
        return self._prefetched.pop((rel, info.etag), None) or self._get(self._key(rel))

    def cacheable(self, data: bytes, etag: str) -> bool:
        """A single-part ETag is the MD5 of the bytes: a manifest replaced between listing and GET
        is not cached under the listed ETag."""
        return len(etag) != 32 or hashlib.md5(data, usedforsecurity=False).hexdigest() == etag

    # -- manifest index ----------------------------------------------------------------------
    def _read_index(self, rel: str, manifests: dict[str, ObjectInfo]) -> dict[tuple[str, str], tuple[bytes, str]]:
        """The entries of index ``rel`` that are byte for byte the listed manifests (MD5 = ETag)."""
        got = self._get(self._key(rel))
        try:
            doc = json.loads(_gunzip(got[0], INDEX_MAX_BYTES)) if got else {}
        except (OSError, EOFError, ValueError, RecursionError):
            return {}  # unreadable (or a gzip bomb): the GETs it would have saved are made instead
        entries = doc.get("manifests") if isinstance(doc, dict) and doc.get("format") == INDEX_FORMAT else None
        if not isinstance(entries, dict):
            return {}
        out = {}
        for key, text in entries.items():
            info, data = manifests.get(key), str(text).encode()
            if info is not None and _md5_is(data, info.etag):
                out[(key, info.etag)] = (data, info.etag)
        return out

    def _refresh_index(self, folder: str, members: dict[str, ObjectInfo], listed: list[str], stale: bool) -> None:
        """Write the index of ``folder`` when none is listed under the members' fingerprint (or
        the one listed failed to give them all), from manifests already in hand (prefetched or
        cached: no extra GETs), then drop the other indexes listed there. Best effort: a store
        this client may not write (read-only credentials) only keeps its cold scans slower."""
        if len(members) < INDEX_MIN:
            return
        name = f"{folder}{INDEX_STEM}{_fingerprint(members)}{INDEX_SUFFIX}"
        if name not in listed or stale:
            entries = {}
            for rel, info in members.items():
                data = self._manifest_bytes(rel, info)
                if data is None:
                    return  # not every manifest in hand: a later scan that has them writes it
                entries[rel] = data.decode()
            doc = {"format": INDEX_FORMAT, "manifests": entries}
            try:
                self.put_bytes(name, gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 1))
            except FeatxError:
                return
        for old in listed:
            if old != name:
                with contextlib.suppress(FeatxError):
                    self.delete(old)

    def _manifest_bytes(self, rel: str, info: ObjectInfo) -> bytes | None:
        """The listed manifest's bytes if this scan holds them (prefetched or cached), verified."""
        got = self._prefetched.get((rel, info.etag))
        data = got[0] if got else None
        if data is None and self.manifest_cache is not None:
            data = self.manifest_cache.get(rel, info.etag)
        return data if data is not None and _md5_is(data, info.etag) else None


class _SinglePut(Staged):
    """Bytes verified against their sha256, sent by one PUT on ``publish``."""

    def __init__(self, store: S3Store, key: str, data: bytes, sha256: str):
        self.store, self.key, self.data, self.sha256 = store, key, data, sha256

    def publish(self) -> ObjectInfo:
        with self.store._errors(self.key):
            resp = self.store.client.put_object(Bucket=self.store.bucket, Key=self.key, Body=self.data,
                                                ContentMD5=_md5_b64(self.data),
                                                ChecksumSHA256=_b64(bytes.fromhex(self.sha256)))
        return ObjectInfo(len(self.data), resp["ETag"].strip('"'))

    def discard(self) -> None:
        self.data = b""


class _Multipart(Staged):
    """An upload whose parts are all on the server; ``publish`` completes it, ``discard`` aborts it."""

    def __init__(self, store: S3Store, key: str, upload_id: str, size: int):
        self.store, self.key, self.upload_id, self.size = store, key, upload_id, size
        self.parts: list[dict[str, Any]] = []
        self.done = False

    def publish(self) -> ObjectInfo:
        with self.store._errors(self.key):
            resp = self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.done = True
        return ObjectInfo(self.size, resp["ETag"].strip('"'))

    def discard(self) -> None:
        if not self.done:
            with contextlib.suppress(Exception):
                self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id)
            self.done = True


def _age_s(initiated: Any) -> float:
    """Seconds since an upload's ``Initiated`` (a string: featx's clients leave timestamps unparsed)."""
    from datetime import datetime, timezone

    try:
        when = initiated if isinstance(initiated, datetime) else datetime.fromisoformat(str(initiated).replace("Z", "+00:00"))
    except ValueError:
        return 0.0  # unknown age: never taken for a leftover
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds()


# -- manifest index ------------------------------------------------------------------------------
# Without it, a cold `featx status` of 1,000 models is 1,000 manifest GETs (7 s on this project's
# machine). Each folder of manifests (``{dataset}/{subset}/``) may hold one index object: the exact
# bytes of every manifest in it, gzipped, named by a fingerprint of the (key, ETag) pairs it holds,
# so a listing tells whether it is current without reading it. A reader uses an entry only if its
# MD5 equals the ETag the listing shows for that manifest (a plain PUT's ETag is its MD5): a stale,
# partial or forged index costs GETs, never a wrong state. Any scan that listed the whole folder
# and holds every manifest rewrites a stale index (the controller does so pass after pass from its
# local cache); commits do not, because Jobs commit in parallel and would race for one object.
INDEX_STEM = "featx-manifest-index-"
INDEX_SUFFIX = ".json.gz"
INDEX_FORMAT = "featx-manifest-index/1"
INDEX_MIN = 2 * SCAN_WORKERS  # fewer manifests are fetched directly: at most two rounds of GETs
INDEX_MAX_BYTES = 256 * MiB  # unpacked; ~80,000 manifests of ~3 KiB: a larger one is not featx's (or a gzip bomb)


def _gunzip(data: bytes, limit: int) -> bytes:
    """``data`` decompressed, refusing (ValueError) more than ``limit`` bytes of output."""
    try:
        out = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(data, limit + 1)
    except zlib.error as e:
        raise ValueError(f"not gzip ({e})") from None
    if len(out) > limit:
        raise ValueError(f"more than {limit} bytes unpacked")
    return out


def _folder(rel: str) -> str:
    return rel[: rel.rfind("/") + 1]


def _md5_is(data: bytes, etag: str) -> bool:
    return len(etag) == 32 and hashlib.md5(data, usedforsecurity=False).hexdigest() == etag


def _fingerprint(members: dict[str, ObjectInfo]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(members):
        digest.update(f"{rel}\t{members[rel].etag}\n".encode())
    return digest.hexdigest()[:32]


def _indexes_by_folder(objects: dict[str, ObjectInfo]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rel in objects:
        name = rel[rel.rfind("/") + 1:]
        if name.startswith(INDEX_STEM) and name.endswith(INDEX_SUFFIX):
            out.setdefault(_folder(rel), []).append(rel)
    return out


def _pick_index(listed: list[str], manifests: dict[str, ObjectInfo], folder: str) -> str:
    """The current index of ``folder`` if listed (two writers may briefly leave two), else any."""
    members = {rel: info for rel, info in manifests.items() if _folder(rel) == folder}
    current = f"{folder}{INDEX_STEM}{_fingerprint(members)}{INDEX_SUFFIX}"
    return current if current in listed else sorted(listed)[-1]


def _whole_folders(prefix: str, manifests: dict[str, ObjectInfo]) -> dict[str, dict[str, ObjectInfo]]:
    """The manifests of each folder that a listing of ``prefix`` holds whole (never index a part)."""
    out: dict[str, dict[str, ObjectInfo]] = {}
    for rel, info in manifests.items():
        folder = _folder(rel)
        if folder.startswith(prefix):
            out.setdefault(folder, {})[rel] = info
    return out


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket[/prefix]``; a malformed URL, an invalid bucket name or a
    prefix that breaks the key rule (``featx.keyparts``) is refused before any request."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not url.startswith("s3://") or not parts.netloc:
        raise StoreError(f"{url!r} is not an S3 URL: use s3://bucket/prefix")
    if "@" in parts.netloc:
        raise StoreError("credentials do not belong in the store URL: use AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    bucket, prefix = parts.netloc, check_prefix(parts.path, "--store prefix")
    if not _BUCKET.match(bucket) or ".." in bucket or _IP_LIKE.match(bucket):
        raise StoreError(f"{bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, '.' "
                         "or '-'): fix --store")
    if parts.query or parts.fragment:
        raise StoreError(f"{url!r}: a store URL has no '?' or '#' part: use s3://bucket/prefix")
    return bucket, prefix


_LOADER: Any = None


def _make_client(endpoint_url: str | None, region: str | None, *, pool: int, retries: int,
                 connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S) -> Any:
    """A boto3 S3 client from the AWS environment; path-style addressing for custom endpoints
    and checksums only when required (S3-compatible stores reject boto3's new defaults; featx
    sends the checksums it wants explicitly)."""
    import boto3
    import botocore.exceptions as bce
    import botocore.loaders
    import botocore.session
    from botocore.config import Config

    global _LOADER
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    try:
        core = botocore.session.get_session()  # a fresh one: reads the environment as it is now
        _LOADER = _LOADER or botocore.loaders.create_loader()
        core.register_component("data_loader", _LOADER)  # service models parsed once per process
        # featx reads no timestamps; dateutil parsing LastModified is 2/3 of a 1,000-key listing
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        session = boto3.session.Session(botocore_session=core, profile_name=os.environ.get("AWS_PROFILE") or None)
    except bce.ProfileNotFound as exc:
        raise StoreError(f"AWS profile {os.environ.get('AWS_PROFILE')!r} not found: fix AWS_PROFILE "
                         "or ~/.aws/config") from exc
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
        or session.region_name or "us-east-1"

    def build(path_style: bool) -> Any:
        config = Config(
            region_name=region, connect_timeout=connect_timeout, read_timeout=read_timeout,
            # total_max_attempts counts the first try (botocore's "max_attempts" would not)
            retries={"total_max_attempts": retries + 1, "mode": "standard"}, max_pool_connections=pool,
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if path_style else None,
        )
        try:
            return session.client("s3", endpoint_url=endpoint, config=config)
        except bce.InvalidRegionError as exc:
            raise StoreError(f"AWS region {clip(region)} is not a valid region name: fix AWS_REGION / "
                             "AWS_DEFAULT_REGION (or the profile's region)") from exc
        except ValueError as exc:  # botocore: "Invalid endpoint: ..."
            raise StoreError(f"invalid S3 endpoint {_public_endpoint(endpoint)!r}: fix --s3-endpoint / "
                             "AWS_ENDPOINT_URL") from exc

    client = build(path_style=bool(endpoint))
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    if not endpoint and not host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        client = build(path_style=True)  # an endpoint from the profile's config: not AWS itself
    return client
