"""The controller's health (what the Deployment's probes read): the state as a table over an
injected clock, the HTTP endpoint on loopback, and the watch loop's one line per failed pass.
The same against a real API server that goes silent: tests/integration/test_controller_health.py.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from featx.errors import TransientError
from featx.kube.controller import Controller
from featx.kube.health import Health, serve
from featx.logs import EventLog
from featx.store.local import LocalStore
from tests.test_kube_reconcile import FakeKube, config, run_yaml  # noqa: F401 - the fixtures


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Step:
    at: float  # seconds after start
    outcome: str  # "ok", "errors" (completed with per-model errors), "failed" (stopped early), "-" (nothing)
    live: bool
    ready: bool
    says: str = ""  # in the reason given


CASES: dict[str, list[Step]] = {
    "before the first pass: live within the limit, never ready": [
        Step(0, "-", True, False, "no pass completed yet"), Step(30, "-", True, False),
        Step(31, "-", False, False, "since start, and no pass completed")],
    "passes succeed: live and ready": [Step(5, "ok", True, True), Step(35, "ok", True, True),
                                       Step(60, "-", True, True)],
    "a pass with per-model errors: live, not ready": [
        Step(5, "errors", True, False, "last pass failed: 1 error(s)"), Step(10, "ok", True, True)],
    "passes fail: not ready at once, not live after the limit, with the cause": [
        Step(5, "ok", True, True), Step(10, "failed", True, False, "cannot reach"),
        Step(35, "failed", True, False), Step(36, "-", False, False, "last error: list jobs: cannot reach")],
    "recovery: one completed pass makes it live and ready again": [
        Step(40, "failed", False, False), Step(41, "ok", True, True)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_health(name):
    clock = Clock()
    health = Health(stale_after_s=30, clock=clock)
    start = clock.now
    for step in CASES[name]:
        clock.now = start + step.at
        if step.outcome == "ok":
            health.completed()
        elif step.outcome == "errors":
            health.completed("1 error(s), first: Create m: boom")
        elif step.outcome == "failed":
            health.failed("list jobs: cannot reach the Kubernetes API")
        (live, why_live), (ready, why_ready) = health.live(), health.ready()
        assert (live, ready) == (step.live, step.ready), (step, why_live, why_ready)
        assert step.says in (why_ready if live else why_live), (step, why_live, why_ready)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_endpoint_answers_the_probes(capsys):
    clock = Clock()
    health = Health(stale_after_s=30, clock=clock)
    server = serve(health, 0, "127.0.0.1")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (503, "no pass completed yet\n")
        health.completed()
        assert _get(f"{base}/readyz") == (200, "ok\n")
        clock.now += 31
        status, text = _get(f"{base}/healthz")
        assert status == 503 and "since last completed pass" in text
        assert _get(f"{base}/metrics")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
    assert capsys.readouterr().err == ""  # probes are not logged


class Unreachable(FakeKube):
    """An API server that answers the first ``good`` list calls, then fails each one."""

    def __init__(self, good: int, error: Exception):
        super().__init__()
        self.good, self.error = good, error

    def list_jobs(self, selector):
        if self.good <= 0:
            raise self.error
        self.good -= 1
        return super().list_jobs(selector)


@pytest.mark.parametrize("error", [
    TransientError("list jobs: cannot reach the Kubernetes API (ReadTimeoutError: read timed out); the next pass retries"),
    RuntimeError("an unexpected\n  bug"),
], ids=["featx-error", "any-exception"])
def test_watch_logs_one_line_per_failed_pass_and_goes_unhealthy(config, tmp_path, error):  # noqa: F811
    clock = Clock()
    out = io.StringIO()
    kube = Unreachable(good=1, error=error)
    ctl = Controller(config, kube, LocalStore(tmp_path), EventLog("json", out), clock=clock)
    health = Health(stale_after_s=3 * 10, clock=clock)

    class Tick:  # the loop's wait: the clock moves one interval instead of sleeping
        def is_set(self) -> bool:
            return False

        def wait(self, seconds: float) -> None:
            clock.now += seconds

    ctl.watch(interval=10, stop=Tick(), max_passes=5, health=health)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    first_pass = [e["event"] for e in lines[:-4]]
    assert first_pass[-1] == "pass" and "error" not in first_pass
    failed = lines[-4:]  # passes 2..5: exactly one line each, with the cause, no traceback
    expected = str(error) if isinstance(error, TransientError) else "RuntimeError: an unexpected bug"
    assert [(e["event"], e["reason"], e["retry_in_s"]) for e in failed] == [("error", expected, 10)] * 4
    # the last completed pass was 40 s before the end, more than 3 intervals: not live, not ready
    assert health.live()[0] is False and health.ready()[0] is False
    assert expected in health.live()[1]
