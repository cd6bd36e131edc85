"""The controller's Prometheus metrics (``/metrics`` beside ``/healthz`` on the health port): what a
dashboard or an alert of a GPU cluster asks of a controller. The registry is the controller's own
(not the client library's global one), so that tests and two controllers in one process do not mix.

- ``featx_models{state}``: the release's models by the state ``featx status`` shows (store state,
  ``running``/``pending`` while a Job is on it), as of the last pass;
- ``featx_jobs_created_total{reason,gpu_class}``, ``featx_jobs_retried_total{reason,gpu_class}``,
  ``featx_models_given_up_total{reason,gpu_class}``: the decisions that acted (reason: the Event's
  for creates, the failure kind for retries and give-ups);
- ``featx_reconcile_pass_seconds``: pass duration; ``featx_reconcile_last_success_timestamp_seconds``:
  the end of the last pass without an error (alert on ``time() - it``).
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from featx.kube.config import Desired
from featx.kube.observe import ObservedJob
from featx.kube.reconcile import Action, Create, GiveUp
from featx.kube.status import annotate
from featx.store.records import StoredState

#: Every state ``featx status`` can show; each is exported (0 included), so a query need not guess.
STATES = ("done", "stale", "running", "pending", "failed", "missing", "corrupt")
#: Pass durations, seconds: a warm pass over the smoke modelset is ~0.1 s, a cold one over 200 models seconds.
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def model_states(desired: Iterable[Desired], committed: Mapping[str, StoredState],
                 observed: Iterable[ObservedJob]) -> dict[str, int]:
    """Models per state, as ``featx status --namespace --release`` counts them (the same ``judge``
    and ``annotate``). Pure."""
    rows = [{"stem": d.stem, "state": d.in_store(committed).judge(committed).state} for d in desired]
    counts = dict.fromkeys(STATES, 0)
    for row in annotate(rows, observed):
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return counts


class Metrics:
    content_type = CONTENT_TYPE_LATEST  # of ``exposition()``: Prometheus' text format

    def __init__(self, clock=time.time) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        r = self.registry
        self.models = Gauge("featx_models", "Models of the release by state, as featx status shows them", ["state"],
                            registry=r)
        labels = ["reason", "gpu_class"]
        self.created = Counter("featx_jobs_created", "Jobs created for a first attempt (reason: Created, Redone)",
                               labels, registry=r)
        self.retried = Counter("featx_jobs_retried", "Jobs created for a next attempt (reason: the failure kind)",
                               labels, registry=r)
        self.given_up = Counter("featx_models_given_up", "Models given up (reason: the failure kind)", labels,
                                registry=r)
        self.pass_seconds = Histogram("featx_reconcile_pass_seconds", "Duration of a reconcile pass",
                                      buckets=PASS_BUCKETS, registry=r)
        self.last_success = Gauge("featx_reconcile_last_success_timestamp_seconds",
                                  "Unix time of the end of the last reconcile pass without an error", registry=r)

    def observed(self, counts: Mapping[str, int]) -> None:
        for state, n in counts.items():
            self.models.labels(state).set(n)

    def acted(self, action: Action) -> None:
        """A decision that acted: a Job created, or a give-up recorded (once)."""
        if isinstance(action, Create):
            if action.reason == "Retried":
                self.retried.labels(action.cause, action.sizing.class_name).inc()
            else:
                self.created.labels(action.reason, action.sizing.class_name).inc()
        elif isinstance(action, GiveUp):
            self.given_up.labels(action.cause, action.gpu_class).inc()

    def passed(self, seconds: float, ok: bool) -> None:
        self.pass_seconds.observe(seconds)
        if ok:
            self.last_success.set(self.clock())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
