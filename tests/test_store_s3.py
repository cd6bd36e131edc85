"""The commit protocol of the Store API against a real SeaweedFS (and, where it makes sense, the
local directory store): only a manifest that matches its data object is "done"; a crash, a kill, a
failed part or a wrong checksum never leaves anything that looks done; errors are one line."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from featx import settings
from featx.errors import FeatxError, StoreError, TransientError
from featx.store import ArtifactKey, FailureRecord, Manifest, Store
from featx.store import s3 as s3mod
from featx.store import base as basemod
from featx.store.base import CommittedByAnother
from featx.store.local import HOST, LocalStore
from featx.store.s3 import S3Store
from tests.fixtures.seaweedfs import SeaweedFS, count_calls, free_ports

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
SMALL = dict(part_size=5 * MiB, multipart_threshold=6 * MiB, max_workers=3)  # multipart at test sizes

BACKENDS = [pytest.param("local", id="local"), pytest.param("s3", id="s3", marks=pytest.mark.s3)]


# -- helpers ---------------------------------------------------------------------------------
def key_for(name: str = "org_model", fmt: str = "pt") -> ArtifactKey:
    return ArtifactKey("prh", "wit_1024", name, "avg", 0, fmt)


def data_file(tmp_path: Path, size: int = 4096, seed: int = 0) -> tuple[Path, str]:
    path = tmp_path / f"data-{seed}-{size}.bin"
    path.write_bytes(os.urandom(size) if seed == 0 else bytes([seed % 256]) * size)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(key: ArtifactKey, path: Path, sha: str) -> Manifest:
    return Manifest(model_id=key.model.replace("_", "/", 1), modality="language", dataset=key.dataset,
                    subset=key.subset, rows_fingerprint="f" * 64, num_rows=8, pool=key.pool, caption_idx=0,
                    format=key.fmt, data_key=key.data, sha256=sha, size=path.stat().st_size, shape=[8, 3, 4],
                    dtype="float32", featx_version="test")


def commit(store: Store, tmp_path: Path, key: ArtifactKey, size: int = 4096) -> Manifest:
    path, sha = data_file(tmp_path, size)
    return store.commit(key, path, manifest_for(key, path, sha))


def s3_env(monkeypatch: pytest.MonkeyPatch, sw: SeaweedFS) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in sw.env().items():
        monkeypatch.setenv(name, value)


def overwrite(store: Store, rel: str, data: bytes, sw: SeaweedFS | None) -> None:
    """Change an object behind the store's back (bit rot, a stray writer)."""
    if isinstance(store, S3Store):
        sw.client().put_object(Bucket=store.bucket, Key=store._key(rel), Body=data)
    else:
        (store.root / rel).write_bytes(data)


def pending_uploads(sw: SeaweedFS, store: S3Store, rel: str) -> list[dict]:
    key = store._key(rel)
    listing = sw.client().list_multipart_uploads(Bucket=store.bucket, Prefix=key)
    return [u for u in listing.get("Uploads", []) if u["Key"] == key]


@pytest.fixture
def s3_store(request, tmp_path, monkeypatch) -> S3Store:
    sw: SeaweedFS = request.getfixturevalue("seaweedfs")
    s3_env(monkeypatch, sw)
    return S3Store.from_url(sw.url(f"t-{uuid.uuid4().hex[:12]}"), manifest_cache=tmp_path / "manifest-cache", **SMALL)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def sw(request, store) -> SeaweedFS | None:
    return request.getfixturevalue("seaweedfs") if isinstance(store, S3Store) else None


# -- commit protocol (both backends) ---------------------------------------------------------
def test_commit_then_scan_says_done(store, tmp_path):
    key = key_for()
    manifest = commit(store, tmp_path, key)
    states = store.scan(f"{key.dataset}/{key.subset}/")
    assert states[key.stem].state == "done"
    assert states[key.stem].manifest.sha256 == manifest.sha256
    assert store.state(key).state == "done"
    assert store.state(key_for("other_model")).state == "missing"


def test_large_file_multipart_commit_and_verify(store, tmp_path):
    key = key_for("big_model")
    manifest = commit(store, tmp_path, key, size=13 * MiB + 123)
    if isinstance(store, S3Store):
        assert manifest.etag.endswith("-3"), "13 MiB in 5 MiB parts is a 3-part multipart upload"
    assert store.state(key).state == "done"
    got = store.verify(key, tmp_path / "down.pt")
    assert got.sha256 == manifest.sha256 and (tmp_path / "down.pt").stat().st_size == 13 * MiB + 123


def test_data_altered_after_commit_is_corrupt(store, sw, tmp_path):
    key = key_for()
    manifest = commit(store, tmp_path, key)
    overwrite(store, key.data, os.urandom(manifest.size), sw)  # same size, different bytes
    state = store.state(key)
    assert state.state == "corrupt" and "changed after commit" in state.reason
    with pytest.raises(ValueError, match="does not match its manifest"):
        store.verify(key, tmp_path / "down.pt")
    assert not (tmp_path / "down.pt").exists()


def test_data_without_manifest_is_not_done(store, tmp_path):
    key = key_for()
    path, sha = data_file(tmp_path)
    store.put_file(key.data, path, sha)  # a crash between the data upload and the manifest
    state = store.state(key)
    assert state.state == "missing" and "data without manifest" in state.reason
    with pytest.raises(FileNotFoundError):
        store.verify(key, tmp_path / "down.pt")


def test_manifest_without_data_is_corrupt(store, tmp_path):
    key = key_for()
    commit(store, tmp_path, key)
    store.delete(key.data)
    assert store.state(key).state == "corrupt"
    with pytest.raises(FileNotFoundError):
        store.verify(key, tmp_path / "down.pt")


def test_recommit_after_corruption_is_done(store, sw, tmp_path):
    key = key_for()
    commit(store, tmp_path, key)
    overwrite(store, key.data, b"garbage", sw)
    assert store.state(key).state == "corrupt"
    commit(store, tmp_path, key)
    assert store.state(key).state == "done"
    store.verify(key, tmp_path / "down.pt")


def test_put_file_rejects_bytes_that_do_not_match_sha(store, tmp_path):
    key = key_for()
    path, _ = data_file(tmp_path)
    with pytest.raises((OSError, FeatxError)):
        store.put_file(key.data, path, "0" * 64)
    assert key.data not in store.list("")


def test_put_bytes_if_absent_twice(store):
    assert store.put_bytes_if_absent("a/b.manifest.json", b"first") is True
    assert store.put_bytes_if_absent("a/b.manifest.json", b"second") is False
    assert store.get_bytes("a/b.manifest.json") == b"first"


def test_failure_record_then_cleared_on_commit(store, tmp_path):
    key = key_for()
    store.record_failure(key, FailureRecord(key.model, "CUDA error: device lost", "transient"))
    again = store.record_failure(key, FailureRecord(key.model, "CUDA error: device lost", "transient"))
    assert again.attempt == 2
    state = store.state(key)
    assert state.state == "failed" and state.failure.attempt == 2 and "device lost" in state.reason
    commit(store, tmp_path, key)
    assert store.state(key).state == "done"
    assert key.failure not in store.list("") and store.get_bytes(key.failure) is None


def test_verify_detects_sha_mismatch(store, tmp_path):
    key = key_for()
    manifest = commit(store, tmp_path, key)
    manifest.sha256 = "0" * 64  # a manifest that lies about its data (written by a buggy writer)
    store.delete(key.manifest)
    assert store.put_bytes_if_absent(key.manifest, manifest.to_json())
    with pytest.raises(ValueError, match="sha256"):
        store.verify(key, tmp_path / "down.pt")
    assert not (tmp_path / "down.pt").exists()


@pytest.mark.parametrize("inner", ["commits_whole", "waits_before_its_manifest"])
def test_two_writers_end_with_one_valid_manifest(store, tmp_path, monkeypatch, inner):
    """Writer A publishes its data; at the commit's test barrier (between data and manifest) writer
    B, with other bytes, publishes too and either commits whole or waits at its own barrier until
    A has written its manifest. Either way the bytes published last stand with their own manifest:
    done, never the old protocol's false ``corrupt`` (A's manifest beside B's bytes)."""
    key = key_for()
    path_a, sha_a = data_file(tmp_path, seed=1)
    path_b, sha_b = data_file(tmp_path, seed=2)
    b_waits, b_at_barrier, release_b = inner == "waits_before_its_manifest", threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def writer(name: str, path: Path, sha: str) -> None:
        try:
            results[name] = store.commit(key, path, manifest_for(key, path, sha))
        except CommittedByAnother as e:
            results[name] = e

    b = threading.Thread(target=writer, args=("B", path_b, sha_b))

    def barrier() -> None:
        if threading.current_thread() is b:
            b_at_barrier.set()
            if b_waits:
                release_b.wait(60)
            return
        b.start()
        if b_waits:
            assert b_at_barrier.wait(60)
        else:
            b.join(60)

    monkeypatch.setattr(basemod, "_barrier", barrier)
    writer("A", path_a, sha_a)
    release_b.set()
    b.join(60)
    state = store.state(key)
    assert state.state == "done", state.reason
    assert state.manifest.sha256 == sha_b and store.verify(key, tmp_path / "down.pt").sha256 == sha_b
    assert isinstance(results["B"], Manifest)
    if b_waits:  # A's manifest was in first; B replaced it, for B's bytes had replaced A's
        assert isinstance(results["A"], Manifest)
    else:
        assert isinstance(results["A"], CommittedByAnother) and "another writer" in str(results["A"])


def test_a_zombie_writer_counts_as_gone():
    """A killed writer whose parent has not reaped it yet (a zombie) no longer writes."""
    from featx.processes import alive

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert alive(child.pid) and alive(os.getpid())
    child.kill()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.01)
    assert not alive(child.pid)  # exited, not reaped
    child.wait()
    assert not alive(child.pid)


def test_interrupted_writers_leftovers_are_removed_by_the_next_commit(tmp_path, monkeypatch):
    """Temporaries of a dead process on this host, or untouched past the grace period, go; a
    live writer's (this process, or another host's within the grace period) stay."""
    store = LocalStore(tmp_path / "store")
    key = key_for()
    folder = tmp_path / "store" / key.stem.rsplit("/", 1)[0]
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    name = key.data.rsplit("/", 1)[1]
    paths = {
        "dead pid here": folder / f".{name}.tmp-{HOST}-{dead.stdout.strip()}",
        "dead pid, manifest": folder / f".{key.manifest.rsplit('/', 1)[1]}.tmp-{HOST}-{dead.stdout.strip()}",
        "old, other host": folder / f".{name}.tmp-other-host-1",
        "fresh, other host": folder / f".{name}.tmp-other-host-2",
        "other model": folder / f".{name.removesuffix('.pt')}_cid-1.pt.tmp-{HOST}-{dead.stdout.strip()}",
    }
    for path in paths.values():
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(paths["old, other host"], (two_hours_ago, two_hours_ago))
    live = folder / f".{name}.tmp-{HOST}-{os.getppid()}"  # a running process's (pytest's parent)
    live.write_bytes(b"partial")
    commit(store, tmp_path, key)
    left = {label for label, path in paths.items() if path.exists()} | ({"live parent"} if live.exists() else set())
    assert left == {"fresh, other host", "other model", "live parent"}
    assert store.state(key).state == "done"


# -- S3 only -----------------------------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from pathlib import Path
from featx.store.s3 import S3Store
url, rel, src, sha = sys.argv[1:5]
store = S3Store.from_url(url, part_size=5 << 20, multipart_threshold=5 << 20, max_workers=1, manifest_cache=False)
def hold(**_):
    print("PART", flush=True)  # one part is on the server: stay here until SIGKILL
    time.sleep(60)
store.client.meta.events.register("after-call.s3.UploadPart", hold)
store.put_file(rel, Path(src), sha)
print("DONE", flush=True)
"""


@pytest.mark.s3
def test_killed_multipart_upload_leaves_nothing_visible(s3_store, seaweedfs, tmp_path, monkeypatch):
    key = key_for("killed_model")
    path, sha = data_file(tmp_path, 16 * MiB)
    env = {**os.environ, **seaweedfs.env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, s3_store.url, key.data, str(path), sha],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # never hang the suite if the child hangs
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip() == "PART", proc.stderr.read()
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert pending_uploads(seaweedfs, s3_store, key.data), "the upload was mid-transfer when killed"
    assert key.data not in s3_store.list("")
    assert s3_store.state(key).state == "missing"
    # a retry within the grace period leaves the (possibly live) upload alone; past it, removes it
    s3_store.commit(key, path, manifest_for(key, path, sha))
    assert s3_store.state(key).state == "done"
    assert len(pending_uploads(seaweedfs, s3_store, key.data)) == 1
    monkeypatch.setattr(settings, "ORPHAN_GRACE_S", -1.0)
    s3_store.commit(key, path, manifest_for(key, path, sha))
    assert s3_store.state(key).state == "done"
    assert pending_uploads(seaweedfs, s3_store, key.data) == []
    s3_store.verify(key, tmp_path / "down.pt")


TERM_SCRIPT = """
import sys, time
from pathlib import Path
from featx.signals import Interrupted, stop_on_signals
from featx.store.s3 import S3Store
url, rel, src, sha = sys.argv[1:5]
store = S3Store.from_url(url, part_size=5 << 20, multipart_threshold=5 << 20, max_workers=1, manifest_cache=False)
def hold(**_):
    print("PART", flush=True)  # one part is on the server: SIGTERM comes now
    time.sleep(2)  # a part still in flight when the signal lands
store.client.meta.events.register("after-call.s3.UploadPart", hold)
with stop_on_signals():
    try:
        store.put_file(rel, Path(src), sha)
    except Interrupted as stop:
        print(stop.name, flush=True)
        sys.exit(stop.exit_code)
print("DONE", flush=True)
"""


@pytest.mark.s3
def test_sigterm_mid_upload_aborts_it(s3_store, seaweedfs, tmp_path):
    """SIGTERM while parts are uploading (featx.signals): the upload is aborted on the way out, so
    nothing is left, not even an invisible unfinished upload."""
    key = key_for("termed_model")
    path, sha = data_file(tmp_path, 16 * MiB)
    env = {**os.environ, **seaweedfs.env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", TERM_SCRIPT, s3_store.url, key.data, str(path), sha],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "PART", proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out.strip()) == (143, "SIGTERM"), err
    assert pending_uploads(seaweedfs, s3_store, key.data) == []
    assert key.data not in s3_store.list("")


@pytest.mark.s3
def test_failed_part_aborts_multipart_upload(s3_store, seaweedfs, tmp_path, monkeypatch):
    """A part whose bytes do not match its Content-MD5 is refused by the server (BadDigest); the
    whole upload is aborted: no object, no unfinished upload, nothing done."""
    key = key_for("bad_part")
    path, sha = data_file(tmp_path, 16 * MiB)
    calls, real = [], s3mod._md5_b64

    def wrong_on_second(data):
        calls.append(len(data))
        return real(b"not these bytes") if len(calls) == 2 else real(data)

    monkeypatch.setattr(s3mod, "_md5_b64", wrong_on_second)
    with pytest.raises(TransientError, match="checksum"):
        s3_store.commit(key, path, manifest_for(key, path, sha))
    assert s3_store.list("") == {}
    assert pending_uploads(seaweedfs, s3_store, key.data) == []
    assert s3_store.state(key).state == "missing"


@pytest.mark.s3
def test_wrong_checksum_rejected_by_server(s3_store, seaweedfs, tmp_path, monkeypatch):
    key = key_for()
    path, sha = data_file(tmp_path)
    monkeypatch.setattr(s3mod, "_md5_b64", lambda data: s3mod._b64(hashlib.md5(b"other").digest()))
    with pytest.raises(TransientError, match="rejected the upload's checksum") as err:
        s3_store.put_file(key.data, path, sha)
    assert "\n" not in str(err.value)
    assert s3_store.list("") == {}
    # and a wrong x-amz-checksum-sha256 with a right Content-MD5 (the raw client)
    import botocore.exceptions

    data = path.read_bytes()
    with pytest.raises(botocore.exceptions.ClientError, match="BadDigest"):
        seaweedfs.client().put_object(Bucket=s3_store.bucket, Key=s3_store._key(key.data), Body=data,
                                      ChecksumSHA256=s3mod._b64(hashlib.sha256(b"other").digest()))
    assert s3_store.list("") == {}


@pytest.mark.s3
def test_manifest_cache_second_scan_makes_no_get(seaweedfs, tmp_path, monkeypatch):
    s3_env(monkeypatch, seaweedfs)
    url, cache = seaweedfs.url(f"t-{uuid.uuid4().hex[:12]}"), tmp_path / "manifest-cache"
    writer = S3Store.from_url(url, manifest_cache=False)
    for i in range(12):
        commit(writer, tmp_path, key_for(f"org_model{i}"))
    writer.record_failure(key_for("broken"), FailureRecord("org/broken", "gated", "permanent"))

    cold = S3Store.from_url(url, manifest_cache=cache)
    calls = count_calls(cold)
    states = cold.scan("prh/wit_1024/")
    assert sum(s.state == "done" for s in states.values()) == 12
    assert states["prh/wit_1024/broken_pool-avg"].state == "failed"
    assert calls == {"ListObjectsV2": 1, "GetObject": 13}  # 12 manifests + 1 failure record

    warm = S3Store.from_url(url, manifest_cache=cache)  # a later `featx status`
    calls = count_calls(warm)
    assert warm.scan("prh/wit_1024/") == states
    assert calls == {"ListObjectsV2": 1, "GetObject": 1}  # only the (mutable) failure record


def test_manifest_cache_serves_later_readers_and_follows_recommit(store, tmp_path, monkeypatch):
    """One manifest cache for both backends: a later reader (the next `featx status`) reads no
    manifest again; a re-commit's new manifest is read anew; ``manifest_cache=False`` keeps none."""
    key, cache = key_for(), tmp_path / "reader-cache"

    def reader(setting=cache) -> tuple[Store, list[str]]:
        r = (LocalStore(store.root, manifest_cache=setting) if isinstance(store, LocalStore)
             else S3Store.from_url(store.url, manifest_cache=setting))
        fetched: list[str] = []
        real = r.fetch_manifest
        monkeypatch.setattr(r, "fetch_manifest", lambda rel, info: fetched.append(rel) or real(rel, info))
        return r, fetched

    first = commit(store, tmp_path, key)
    cold, fetched = reader()
    assert cold.state(key).manifest.sha256 == first.sha256 and fetched == [key.manifest]
    warm, fetched = reader()
    assert warm.state(key).manifest.sha256 == first.sha256 and fetched == []
    second = commit(store, tmp_path, key)
    again, fetched = reader()
    assert again.state(key).manifest.sha256 == second.sha256 != first.sha256 and fetched == [key.manifest]
    uncached, fetched = reader(False)
    uncached.state(key)
    uncached.state(key)
    assert fetched == [key.manifest] * 2


@pytest.mark.s3
def test_manifest_index_makes_a_cold_scan_one_get(seaweedfs, tmp_path, monkeypatch):
    """A machine that never saw the manifests reads them from the folder's index (one GET); the
    index is rewritten by a scan that sees it stale, and only entries that match the listing's
    ETags are believed."""
    s3_env(monkeypatch, seaweedfs)
    url, folder = seaweedfs.url(f"t-{uuid.uuid4().hex[:12]}"), "prh/wit_1024/"
    writer = S3Store.from_url(url, manifest_cache=False)
    n = s3mod.INDEX_MIN
    for i in range(n):
        commit(writer, tmp_path, key_for(f"org_model{i}"))

    def fresh_scan(cache: str) -> tuple[dict, dict[str, int]]:  # a `featx status` on a new machine
        reader = S3Store.from_url(url, manifest_cache=tmp_path / cache)
        calls = count_calls(reader)
        return reader.scan(folder), calls

    states, calls = fresh_scan("first")  # nobody indexed the folder yet: GETs, then the index
    assert sum(s.state == "done" for s in states.values()) == n
    assert calls == {"ListObjectsV2": 1, "GetObject": n, "PutObject": 1}
    assert fresh_scan("second") == (states, {"ListObjectsV2": 1, "GetObject": 1})
    assert fresh_scan("second") == (states, {"ListObjectsV2": 1})  # warm: the local cache

    # a new commit: a cold reader takes the rest from the old index, GETs the new one, re-indexes
    commit(writer, tmp_path, key_for("org_new"))
    states, calls = fresh_scan("third")
    assert states[key_for("org_new").stem].state == "done"
    assert calls == {"ListObjectsV2": 1, "GetObject": 2, "PutObject": 1, "DeleteObject": 1}
    (index,) = [rel for rel in writer.list(folder) if "manifest-index" in rel]

    # a forged index (every manifest claims other data) is not believed, and is replaced
    doc = json.loads(gzip.decompress(writer.get_bytes(index)))
    doc["manifests"] = {k: v.replace('"sha256": "', '"sha256": "0') for k, v in doc["manifests"].items()}
    overwrite(writer, index, gzip.compress(json.dumps(doc).encode()), seaweedfs)
    forged, calls = fresh_scan("fourth")
    assert forged == states
    assert calls == {"ListObjectsV2": 1, "GetObject": 1 + n + 1, "PutObject": 1}
    assert fresh_scan("fifth")[1] == {"ListObjectsV2": 1, "GetObject": 1}


@pytest.mark.s3
def test_manifest_cache_follows_recommit(s3_store, tmp_path):
    key = key_for()
    first = commit(s3_store, tmp_path, key)
    assert s3_store.state(key).manifest.sha256 == first.sha256
    second = commit(s3_store, tmp_path, key)  # new bytes, new manifest, new ETag
    assert second.sha256 != first.sha256
    assert s3_store.state(key).manifest.sha256 == second.sha256


@pytest.mark.s3
@pytest.mark.parametrize("case", ["wrong_secret", "unknown_key", "missing_bucket", "unreachable"])
def test_bad_configuration_fails_fast_with_one_line(case, seaweedfs, monkeypatch):
    """Settings no retry can fix are StoreError (exit 2); an unreachable endpoint may come back:
    TransientError (exit 1, the Job retries)."""
    s3_env(monkeypatch, seaweedfs)
    url = seaweedfs.url("p")
    kind = TransientError if case == "unreachable" else StoreError
    if case == "wrong_secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-" + "x" * 20)
        expect = "access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    elif case == "unknown_key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "FXNOBODY")
        expect = "access denied"
    elif case == "missing_bucket":
        url = "s3://no-such-bucket-featx/p"
        expect = f"bucket no-such-bucket-featx does not exist at {seaweedfs.endpoint}: create it or fix --store"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")  # nothing listens
        expect = "cannot reach S3 endpoint http://127.0.0.1:"
    start = time.monotonic()
    store = S3Store.from_url(url, manifest_cache=False)
    with pytest.raises(kind) as err:
        store.check()
    message = str(err.value)
    assert expect in message and "\n" not in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message and seaweedfs.secret_key not in message
    assert time.monotonic() - start < 15
    with pytest.raises(kind):  # the same mapping on every operation
        store.list("")


@pytest.mark.s3
def test_endpoint_flag_overrides_environment(seaweedfs, monkeypatch):
    s3_env(monkeypatch, seaweedfs)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    store = S3Store.from_url(seaweedfs.url("p"), endpoint_url=seaweedfs.endpoint)
    store.check()
    assert store.endpoint == seaweedfs.endpoint


@pytest.mark.s3
def test_url_and_messages_carry_no_secrets(s3_store, seaweedfs):
    assert s3_store.url.startswith(f"s3://{seaweedfs.bucket}/t-")
    for text in (s3_store.url, repr(s3_store), s3_store.endpoint):
        assert seaweedfs.secret_key not in text and seaweedfs.access_key not in text
    with pytest.raises(StoreError, match="credentials do not belong"):
        S3Store.from_url(f"s3://{seaweedfs.access_key}:{seaweedfs.secret_key}@bucket/p")


@pytest.mark.s3
def test_fixture_env_drives_a_subprocess(seaweedfs):
    """``seaweedfs.env()`` is all a ``featx`` subprocess needs (AWS_ENDPOINT_URL, keys, region)."""
    code = "import sys; from featx.store import open_store; s = open_store(sys.argv[1]); s.check(); print(s.url)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(seaweedfs.env(), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, seaweedfs.url("sub")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == seaweedfs.url("sub")


# -- unreadable records are states, not crashes ---------------------------------------------------
def _good_manifest_with(**fields) -> bytes:
    key = key_for("org_odd")
    raw = json.loads(manifest_for(key, Path(__file__), "0" * 64).to_json())
    return json.dumps({**raw, **fields}).encode()


UNREADABLE = {  # what lies under a record's name -> a word of the reason featx gives
    "not JSON": (b"{this is not json", "not JSON"),
    "empty": (b"", "empty"),
    "empty object": (b"{}", "no "),
    "a list": (b"[]", "a JSON list"),
    "a string": (b'"manifest"', "a JSON str"),
    "not UTF-8": (b"\xff\xfe\x00garbage", "not JSON"),
    "a 5000-digit number": (b'{"size": ' + b"9" * 5000 + b"}", "not JSON (Exceeds the limit"),
    "deep nesting": (b"[" * 200_000, "not JSON"),
    "wrong type": (_good_manifest_with(size="big"), "size is \"big\""),
    "a huge number": (_good_manifest_with(size=10 ** 30), "size is 1000000000000000000000000000000"),
    "a foreign object": (json.dumps({"kind": "Deployment", "apiVersion": "apps/v1"}).encode(), "not a Manifest"),
}


@pytest.mark.parametrize("what", UNREADABLE)
def test_unreadable_records_are_corrupt_and_the_scan_goes_on(store, tmp_path, what):
    """Bytes under a manifest's or a failure record's name that are no such record: that model is
    ``corrupt`` with the reason, its neighbours keep their states, and a commit or a new failure
    record replaces the bytes."""
    data, word = UNREADABLE[what]
    good, bad_manifest, bad_failure, failed = (key_for(n) for n in ("org_good", "org_bad", "org_badf", "org_failed"))
    commit(store, tmp_path, good)
    commit(store, tmp_path, bad_manifest)
    store.put_bytes(bad_manifest.manifest, data)
    store.put_bytes(bad_failure.failure, data)
    store.record_failure(failed, FailureRecord("org/failed", "CUDA error", "transient"))
    store.put_bytes("prh/wit_1024/stray.manifest.json", data)  # a foreign object, no data beside it

    states = store.scan("prh/wit_1024/")
    assert states[good.stem].state == "done" and states[failed.stem].state == "failed"
    for key, why in ((bad_manifest, word), (bad_failure, "unreadable failure record")):
        st = states[key.stem]
        assert st.state == "corrupt" and why in st.reason and len(st.reason) < 300, st.reason
    assert states["prh/wit_1024/stray"].state == "corrupt"
    with pytest.raises(ValueError, match="not a manifest featx wrote"):
        store.verify(bad_manifest, tmp_path / "down.pt")

    assert store.record_failure(bad_failure, FailureRecord("org/badf", "again", "transient")).attempt == 1
    commit(store, tmp_path, bad_manifest)
    states = store.scan("prh/wit_1024/")
    assert states[bad_failure.stem].state == "failed" and states[bad_manifest.stem].state == "done"


def test_a_record_too_large_to_be_featx_s_is_refused_unread(store, tmp_path):
    key = key_for("org_big")
    commit(store, tmp_path, key)
    store.put_bytes(key.manifest, b" " * (basemod.MAX_RECORD_BYTES + 1))
    st = store.scan("prh/wit_1024/")[key.stem]
    assert st.state == "corrupt" and "more than any manifest" in st.reason


@pytest.mark.s3
@pytest.mark.parametrize("index", ["not gzip", "gzip of a list", "manifests a list", "gzip bomb"])
def test_an_unreadable_manifest_index_costs_gets_not_the_scan(seaweedfs, tmp_path, monkeypatch, index):
    s3_env(monkeypatch, seaweedfs)
    url, folder = seaweedfs.url(f"t-{uuid.uuid4().hex[:12]}"), "prh/wit_1024/"
    writer = S3Store.from_url(url, manifest_cache=False)
    for i in range(s3mod.INDEX_MIN):
        commit(writer, tmp_path, key_for(f"org_model{i}"))
    writer.scan(folder)  # writes the index
    (rel,) = [r for r in writer.list(folder) if "manifest-index" in r]
    body = {"not gzip": b"PK\x03\x04 a zip file",
            "gzip of a list": gzip.compress(b"[1, 2, 3]"),
            "manifests a list": gzip.compress(json.dumps({"format": s3mod.INDEX_FORMAT, "manifests": []}).encode()),
            "gzip bomb": gzip.compress(b"{" + b" " * (s3mod.INDEX_MAX_BYTES + 1), 9)}[index]
    overwrite(writer, rel, body, seaweedfs)
    states = S3Store.from_url(url, manifest_cache=tmp_path / "cold").scan(folder)
    assert sum(s.state == "done" for s in states.values()) == s3mod.INDEX_MIN


# -- bit rot: --verify reads what a listing cannot see ---------------------------------------------
def test_verify_states_finds_what_the_listing_cannot(store, sw, tmp_path):
    """Locally: one bit flipped, size and mtime restored. On S3 (where a rewrite changes the ETag)
    the same through the manifest: its sha256 no longer the data's, size and ETag as listed."""
    good, rotten = key_for("org_good"), key_for("org_rotten")
    commit(store, tmp_path, good)
    manifest = commit(store, tmp_path, rotten, size=3 * MiB)
    if isinstance(store, S3Store):
        manifest.sha256 = hashlib.sha256(b"other bytes").hexdigest()
        store.delete(rotten.manifest)
        assert store.put_bytes_if_absent(rotten.manifest, manifest.to_json())
    else:
        path = store.root / rotten.data
        st, data = path.stat(), bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    states = store.scan("prh/wit_1024/")
    assert {s.state for s in states.values()} == {"done"}  # what plain status sees
    seen: list[int] = []
    checked = store.verify_states(states, [good.stem, rotten.stem, "prh/wit_1024/absent"], seen.append)
    assert checked[good.stem].state == "done"
    assert checked[rotten.stem].state == "corrupt" and "sha256" in checked[rotten.stem].reason
    assert sum(seen) == manifest.size + states[good.stem].manifest.size  # every byte read once
    assert "prh/wit_1024/absent" not in checked
