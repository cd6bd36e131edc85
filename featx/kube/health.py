"""Is the controller's loop still doing its job? What the Deployment's probes ask.

- **live** (``/healthz``, the liveness probe): a pass *completed* (Jobs listed, the store
  scanned, the actions tried) within ``stale_after_s``, counted from the start before the first
  one. A loop that cannot reach the API server or the store, or that hangs, stops completing
  passes, and the kubelet restarts the container.
- **ready** (``/readyz``, the readiness probe): live, and the last pass had no error at all
  (per-model errors included): ``kubectl get pods`` shows ``0/1`` while passes fail.

``stale_after_s`` is a number of reconcile intervals (``controller.health.failAfterIntervals``).
The state is plain data with an injected clock, so it is tested without a server or sleeping;
``serve`` puts it behind a tiny HTTP endpoint (no privileges, no files: fits a restricted,
read-only-root pod), with the controller's Prometheus ``/metrics`` (``featx.kube.metrics``) beside it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from featx.kube.metrics import Metrics

#: Default reconcile intervals without a completed pass before the controller counts as unhealthy.
FAIL_AFTER_INTERVALS = 3


@dataclass
class Health:
    """The last pass outcomes, read by the probes (thread-safe)."""

    stale_after_s: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    last_completed: float | None = field(default=None, init=False)
    last_error: str = field(default="", init=False)  # of the latest pass; "" when it succeeded
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def completed(self, error: str = "") -> None:
        """A pass ran to its end; ``error`` names what went wrong in it, if anything."""
        with self._lock:
            self.last_completed, self.last_error = self.clock(), error

    def failed(self, error: str) -> None:
        """A pass stopped early (API server or store unreachable, bad settings)."""
        with self._lock:
            self.last_error = error

    def live(self) -> tuple[bool, str]:
        with self._lock:
            since = self.last_completed if self.last_completed is not None else self.started
            age = self.clock() - since
            if age <= self.stale_after_s:
                return True, "ok"
            what = "last completed pass" if self.last_completed is not None else "start, and no pass completed"
            cause = f"; last error: {self.last_error}" if self.last_error else ""
            return False, f"{age:.0f} s since {what} (limit {self.stale_after_s:.0f} s){cause}"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.live()
        with self._lock:
            if ok and self.last_completed is None:
                return False, "no pass completed yet"
            if ok and self.last_error:
                return False, f"last pass failed: {self.last_error}"
        return ok, why


class _Handler(BaseHTTPRequestHandler):
    health: Health  # set on the subclass that ``serve`` makes
    metrics: Metrics | None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics" and self.metrics is not None:
            self._reply(200, self.metrics.exposition(), self.metrics.content_type)
            return
        check = {"/healthz": self.health.live, "/readyz": self.health.ready}.get(path)
        ok, text = check() if check else (False, "not found: try /healthz, /readyz or /metrics")
        self._reply(200 if ok else (503 if check else 404), (text + "\n").encode(), "text/plain; charset=utf-8")

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silent: probes every few seconds would drown the controller's own lines."""


def serve(health: Health, port: int, host: str = "0.0.0.0", metrics: Metrics | None = None) -> ThreadingHTTPServer:
    """``/healthz``, ``/readyz`` and (given ``metrics``) Prometheus' ``/metrics`` on ``host:port``
    (0 = any free port) in a daemon thread; ``server.shutdown()`` stops it."""
    handler = type("HealthHandler", (_Handler,), {"health": health, "metrics": metrics})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="featx-health", daemon=True).start()
    return server
