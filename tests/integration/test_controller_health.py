"""The controller never hangs silently: ``featx reconcile --watch`` (what the chart's Deployment
runs) against the real API server and a real SeaweedFS, each reached through a TCP relay that
the test can make go silent (connections accepted, nothing answered: a hung server or a
black-holed network path, the case where a client without timeouts waits forever).

While a dependency is silent, every pass fails within the request timeout and logs one JSON
``error`` line with the cause, nothing else (no traceback, no library warnings); ``/healthz``
and ``/readyz`` turn 503; when it answers again the next pass succeeds and both turn 200.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from featx.kube.helm import render_run_config
from localcluster.controlplane import wait_until
from tests.cluster.fixtures import k8s_api, k8s_cluster, k8s_namespace  # noqa: F401
from tests.fixtures.seaweedfs import free_ports

pytestmark = [pytest.mark.k8s, pytest.mark.s3]

FEATX = str(Path(sys.executable).with_name("featx"))
TIMEOUT_S = 3  # --request_timeout: a silent dependency fails a pass after about this long


class Relay:
    """127.0.0.1:``port`` forwarded to ``upstream``; ``silent`` swallows bytes both ways."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.silent = threading.Event()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
                up = socket.create_connection(self.upstream)
            except OSError:
                return
            self._open += [conn, up]
            for src, dst in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                if not self.silent.is_set():
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self.server.close()
        for s in self._open:
            s.close()


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0  # not listening yet


class Controller:
    """``featx reconcile --watch`` as a subprocess; ``lines()`` is everything it printed."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, health_port: int):
        self.log, self.health_port = log, health_port
        self._out = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def events(self, start: int = 0) -> list[dict]:
        return [json.loads(line) for line in self.lines()[start:]]  # every line is one JSON event

    def healthy(self) -> tuple[int, int]:
        return probe(self.health_port, "/healthz"), probe(self.health_port, "/readyz")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._out.close()


@pytest.fixture
def controller(k8s_cluster, k8s_namespace, seaweedfs, tmp_path) -> Iterator[tuple[Controller, dict[str, Relay]]]:  # noqa: F811
    kubeconfig = yaml.safe_load(Path(k8s_cluster.kubeconfig).read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]  # https://127.0.0.1:PORT
    host, port = server.split("//", 1)[1].rsplit(":", 1)
    relays = {"kubernetes": Relay((host, int(port))),
              "s3": Relay(("127.0.0.1", int(seaweedfs.endpoint.rsplit(":", 1)[1])))}
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host}:{relays['kubernetes'].port}"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    run = render_run_config(sets=["modelset={featx-smoke/gpt2,featx-smoke/vit}", "dataset=featx-sample", "subset=null",
                                  f"s3.bucket={seaweedfs.bucket}", f"s3.prefix={k8s_namespace}"],
                            release="rel", namespace=k8s_namespace)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "KUBECONFIG"}
    env.update(seaweedfs.env(), AWS_ENDPOINT_URL=f"http://127.0.0.1:{relays['s3'].port}",
               FEATX_HOME=str(tmp_path / "home"))
    (health_port,) = free_ports(1)
    argv = [FEATX, "reconcile", "--watch", "--config", str(tmp_path / "run.yaml"),
            "--kubeconfig", str(tmp_path / "kubeconfig"), "--log_format", "json", "--interval", "1",
            "--request_timeout", str(TIMEOUT_S), "--health_port", str(health_port), "--health_host", "127.0.0.1",
            "--fail_after_intervals", "3"]
    ctl = Controller(argv, env, tmp_path / "controller.log", health_port)
    try:
        yield ctl, relays
    finally:
        ctl.stop()
        for relay in relays.values():
            relay.close()


@pytest.mark.parametrize("dependency, cause", [
    ("kubernetes", "list jobs: cannot reach the Kubernetes API"),
    ("s3", "did not answer"),  # botocore's ReadTimeoutError, in the store's one-line error
])
def test_a_silent_dependency_fails_each_pass_with_one_line_and_the_probes(controller, dependency, cause):
    ctl, relays = controller

    def passes_ok() -> bool:
        assert ctl.proc.poll() is None, "\n".join(ctl.lines())
        return ctl.healthy() == (200, 200) and any(e["event"] == "pass" for e in ctl.events())

    wait_until(passes_ok, 120, lambda: "a first pass and both probes 200:\n" + "\n".join(ctl.lines()[-5:]),
               interval=0.5)

    relays[dependency].silent.set()
    mark = len(ctl.lines())

    def failing() -> bool:
        errors = [e for e in ctl.events(mark) if e["event"] == "error"]
        return len(errors) >= 3 and ctl.healthy() == (503, 503)

    # without request timeouts the first pass after the cut never ends: no line, probes stay 200
    wait_until(failing, 120, lambda: "3 error lines and both probes 503:\n" + "\n".join(ctl.lines()[mark:]),
               interval=0.5)
    after = ctl.events(mark)
    failed = [e for e in after if e["event"] == "error"]
    assert all(cause in e["reason"] and e["retry_in_s"] == 1 for e in failed), failed
    assert all("\n" not in e["reason"] for e in failed)
    # one line per failed pass: after the pass that was in flight at the cut, only error lines
    tail = after[next(i for i, e in enumerate(after) if e["event"] == "error"):]
    assert {e["event"] for e in tail} == {"error"}, tail

    relays[dependency].silent.clear()
    wait_until(lambda: ctl.healthy() == (200, 200), 120,
               lambda: "both probes 200 again:\n" + "\n".join(ctl.lines()[-5:]), interval=0.5)
    assert ctl.proc.poll() is None
