"""``featx check`` (what ``helm test`` runs in the chart's test pod): the real SeaweedFS with the
right and with wrong credentials, and a real controller health endpoint, ready and not. In the
chart's test pod on a real node: tests/e2e/test_real_node.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from featx.kube.health import Health, serve
from tests.helpers import REPO


def featx_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "featx.cli.main", "check", *args], capture_output=True, text=True,
                          env={**base, **env, "PYTHONPATH": str(REPO)}, timeout=120)


@pytest.mark.s3
def test_check_passes_with_the_keys_and_fails_in_one_line_with_wrong_ones(seaweedfs):
    url = seaweedfs.url("check")
    ok = featx_check(seaweedfs.env(), "--store", url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"ok  store {url}: reachable and writable\n"
    wrong = featx_check({**seaweedfs.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "--store", url)
    assert wrong.returncode != 0 and not wrong.stdout
    (line,) = wrong.stderr.splitlines()
    assert line.startswith(f"featx: error: {url}: access denied: check AWS_ACCESS_KEY_ID"), line
    assert "not-the-secret" not in line and seaweedfs.secret_key not in line


def test_check_asks_the_controller_if_it_is_ready(tmp_path):
    clock = [0.0]
    health = Health(60, clock=lambda: clock[0])
    server = serve(health, 0, "127.0.0.1")
    ready = f"http://127.0.0.1:{server.server_address[1]}/readyz"
    try:
        before = featx_check({}, "--store", str(tmp_path), "--ready_url", ready)
        assert before.returncode != 0
        assert before.stderr.splitlines() == [
            f"featx: error: the controller is not ready ({ready}: 503): no pass completed yet; see its log "
            "(kubectl logs deploy/<release>)"]
        health.completed()
        after = featx_check({}, "--store", str(tmp_path), "--ready_url", ready)
        assert after.returncode == 0, after.stderr
        assert after.stdout.splitlines()[-1] == f"ok  controller {ready}: ok"
    finally:
        server.shutdown()
    gone = featx_check({}, "--store", str(tmp_path), "--ready_url", ready, "--timeout", "3")
    assert gone.returncode != 0 and "cannot reach the controller at" in gone.stderr
    assert list(tmp_path.iterdir()) == []  # the probe write left nothing
