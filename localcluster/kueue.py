"""Kueue, the upstream binary, as a host process against a local cluster's API server.

``scripts/build-control-plane.sh`` builds ``sigs.k8s.io/kueue/cmd/kueue`` from its Go module and
copies the module's CRDs next to the bin dir (``kueue-crds``). :func:`start_kueue` applies them
(server-side: some are too large for client-side apply's annotation), writes a Configuration
(no leader election, no internal certificate management, only the ``batch/job`` integration,
only Jobs that name a queue) and self-signed certificates in the caller's work dir, and starts
Kueue; it returns once Kueue's ``/readyz`` answers.

No webhook configuration is registered: featx creates its Jobs suspended when ``kueue.queueName``
is set, which is all Kueue's Job webhook would add. The visibility API server is switched off (its
feature gate), so its fixed certificate path ``/visibility`` is never read.

v0.17.0 with internal certificate management off reads the metrics server's certificate from the
fixed path ``/etc/kueue/metrics/certs`` and exits without it. Rather than writing a key there,
Kueue runs in a private mount namespace (``unshare --mount``, so this needs root) in which the
work dir's certificate directory is bind-mounted on that path: two clusters on one machine each
see their own, and nothing but the empty directory is left on the host.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster.controlplane import Cluster, ControlPlaneError, _reap, find_bin_dir, wait_until

METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # fixed in v0.17.0's cmd/kueue/main.go
NAMESPACE = "kueue-system"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(directory: Path, host: str = "127.0.0.1") -> Path:
    """``tls.crt``/``tls.key`` for ``host`` in ``directory`` (openssl; nothing verifies them)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={host}",
         "-addext", f"subjectAltName=IP:{host}", "-keyout", str(directory / "tls.key"),
         "-out", str(directory / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )
    return directory


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict:
    """Kueue's Configuration for a host process: batch/job only, Jobs without a queue left alone."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},  # off; its certificate is still read (see the module doc)
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


@dataclass
class Kueue:
    """A running Kueue; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    proc: subprocess.Popen[bytes]
    workdir: Path
    _stopped: bool = False

    def log(self) -> str:
        path = self.workdir / "kueue.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        _reap([self.proc.pid], grace=10)
        self.proc.wait(timeout=10)


def install_crds(cluster: Cluster, crds: Path) -> None:
    """Kueue's CRDs, applied server-side, and established."""
    files = sorted(crds.resolve().glob("*.yaml"))  # kubectl -f does not follow a linked directory
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in files]
    for argv in (["apply", "--server-side", "--force-conflicts", *(a for p in files for a in ("-f", str(p)))],
                 ["wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names)]):
        proc = cluster.kubectl(*argv, check=False, timeout=120)
        if proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {argv[0]} of Kueue's CRDs failed: {proc.stderr[-2000:]}")


def start_kueue(cluster: Cluster, workdir: Path, *, bin_dir: Path | None = None, timeout: float = 120) -> Kueue:
    """Install Kueue's CRDs into ``cluster`` and start Kueue; see the module doc."""
    if os.geteuid() != 0:
        raise PermissionError("Kueue runs in its own mount namespace here (its fixed metrics certificate path): needs root")
    bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
    binary, crds = bin_dir / "kueue", bin_dir.parent / "kueue-crds"
    if not os.access(binary, os.X_OK) or not crds.is_dir():
        raise ControlPlaneError(f"no Kueue in {bin_dir}: rerun scripts/build-control-plane.sh (make control-plane)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    install_crds(cluster, crds)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)

    health_port = _free_port()
    config_path = workdir / "kueue-config.yaml"
    config_path.write_text(yaml.safe_dump(configuration(_free_port(), health_port, self_signed(workdir / "webhook-certs"))))
    metrics_certs = self_signed(workdir / "metrics-certs")
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)  # the mount point; stays empty on the host
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(metrics_certs), str(METRICS_CERT_DIR),
            str(binary), "--config", str(config_path)]
    with open(workdir / "kueue.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    kueue = Kueue(proc, workdir)
    atexit.register(kueue.stop)

    def ready() -> bool:
        if proc.poll() is not None:
            raise ControlPlaneError(f"kueue exited with {proc.returncode}:\n{kueue.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until(ready, timeout, lambda: f"Kueue's /readyz:\n{kueue.log()[-3000:]}", interval=0.5)
    except BaseException:
        kueue.stop()
        raise
    return kueue
