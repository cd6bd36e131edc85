"""One reconcile pass = observe (Jobs, then the store) -> ``decide`` -> apply; ``--watch`` repeats
it every ``interval`` seconds. The only place where decisions become API calls and store writes.

Order matters: Jobs are listed *before* the store is scanned. A Job seen Complete has committed
before it exited, so its commit is in the later scan; the reverse order could see a fresh Job
Complete but its commit not yet, and spend an attempt on a model that is done.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from featx import settings as featx_settings
from featx.errors import FeatxError
from featx.kube.config import Desired, RunConfig
from featx.kube.events import event_for
from featx.kube.health import FAIL_AFTER_INTERVALS, Health
from featx.kube.jobs import release_selector, render_job
from featx.kube.metrics import Metrics, model_states
from featx.kube.observe import ObservedJob, observe
from featx.kube.reconcile import Action, Create, Delete, GiveUp, Settings, Skip, decide
from featx.kube.rowcount import count_rows
from featx.pipeline.shards import format_indices
from featx.logs import EventLog
from featx.store import FailureRecord, Store, StoredState


#: API writes (creates, deletes) in flight at once: a cold pass of 139 models is ~5 round trips
#: deep. More did not help on the benchmark's control plane: the API server was the bottleneck.
WRITE_WORKERS = 32
#: Retries of one S3 request of the controller (it moves only small objects; the next pass retries).
STORE_RETRIES = 1


class Kube(Protocol):
    """What the controller needs from the API (``featx.kube.client.KubeClient``; fakes in tests)."""

    namespace: str
    def list_jobs(self, selector: str) -> list[dict[str, Any]]: ...
    def list_pods(self, selector: str) -> list[dict[str, Any]]: ...
    def create_job(self, manifest: dict[str, Any]) -> str | None: ...
    def delete_job(self, name: str) -> bool: ...
    def keep_job(self, name: str, reason: str) -> bool: ...
    def create_event(self, event: dict[str, Any]) -> None: ...


def settings_for(config: RunConfig) -> Settings:
    return Settings(attempts=config.attempts, concurrency=config.concurrency, classes=config.classes,
                    qlora=config.request.qlora, batch_size=config.batch_size, release=config.release,
                    ttl_s=int(config.job_template.get("ttlSecondsAfterFinished") or 0),
                    render=lambda d, sizing, attempt, shards: render_job(config, d, sizing, attempt, shards))


@dataclass
class PassResult:
    actions: list[Action] = field(default_factory=list)
    created: int = 0
    existed: int = 0
    deleted: int = 0
    gave_up: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        skips: dict[str, int] = {}
        for a in self.actions:
            if isinstance(a, Skip):
                skips[a.kind] = skips.get(a.kind, 0) + 1
        return {"created": self.created, "existed": self.existed, "deleted": self.deleted, "gave_up": self.gave_up,
                **{f"skip_{k}": v for k, v in sorted(skips.items())}, "errors": len(self.errors),
                "seconds": round(self.seconds, 3)}


class Controller:
    def __init__(self, config: RunConfig, kube: Kube, store: Store, log: EventLog | None = None,
                 clock: Callable[[], float] = time.monotonic, workers: int = WRITE_WORKERS,
                 metrics: Metrics | None = None):
        self.config, self.kube, self.store = config, kube, store
        self.metrics = metrics or Metrics()
        self.workers = max(1, workers)  # API writes (creates, deletes) in flight at once
        self._lock = threading.Lock()
        self.log = log or EventLog()
        self.clock = clock
        self.settings = settings_for(config)
        self.selector = release_selector(config.release)
        self._desired: list[Desired] | None = None
        self._logged: set[tuple[str, str, str]] = set()  # skip lines already logged (no repeats per pass)
        self._verified: dict[tuple[str, str], StoredState] = {}  # (stem, data etag) -> verified state
        self.instance = os.environ.get("HOSTNAME") or socket.gethostname()  # the pod's name in a pod

    @property
    def desired(self) -> list[Desired]:
        if self._desired is None:  # the catalog (and the data set's row count) do not change while it runs
            self._desired = self.config.desired(self._num_rows())
        return self._desired

    def _num_rows(self) -> int | None:
        """The data set's row count for ``sharding.rowsPerShard`` (``featx.kube.rowcount``), said once."""
        if not self.config.sharding.rows_per_shard:
            return None
        count = count_rows(self.config.request)
        self.log.event("rows", rows=count.rows, source=count.source,
                       reason=None if count.rows else "one Job per model runs its shards in turn; set numSamples "
                                                      "for one Indexed Job of parallel shards")
        return count.rows

    def observe(self) -> list[ObservedJob]:
        jobs = self.kube.list_jobs(self.selector)
        failed = any(_failed(j) for j in jobs)
        pods = self.kube.list_pods(self.selector) if failed else []  # exit codes only matter for failures
        return observe(jobs, pods)

    def plan(self) -> list[Action]:
        """This pass's actions; the models' states go to ``metrics`` on the way."""
        observed = self.observe()  # first: see the module docstring
        committed = self.store.scan(self.config.scan_prefix)
        if self.config.verify:
            committed = self._verify(committed)
        self.metrics.observed(model_states(self.desired, committed, observed))
        return decide(self.desired, committed, observed, self.settings)

    def _verify(self, committed: dict[str, StoredState]) -> dict[str, StoredState]:
        """``verify: true``: each desired committed file is read and hashed once per controller
        process and data ETag (a recommit is a new ETag), not every pass."""
        def tag(stem: str) -> tuple[str, str]:
            st = committed[stem]
            return stem, (st.manifest.etag or st.manifest.sha256) if st.manifest else ""

        done = [d.stem for d in self.desired if d.stem in committed and committed[d.stem].state == "done"]
        fresh = [s for s in done if tag(s) not in self._verified]
        checked = self.store.verify_states(committed, fresh)
        self._verified.update({tag(s): checked[s] for s in fresh})
        return {**committed, **{s: self._verified[tag(s)] for s in done}}

    def run_once(self, dry_run: bool = False) -> PassResult:
        t0 = self.clock()
        result = PassResult()
        result.actions = self.plan()
        if dry_run:
            for action in result.actions:
                self._event(action, dry_run=True)
        else:
            writes = [a for a in result.actions if isinstance(a, (Create, Delete))]
            rest = [a for a in result.actions if not isinstance(a, (Create, Delete))]
            if len(writes) > 1 and self.workers > 1:  # independent API calls: overlap their round trips
                with ThreadPoolExecutor(min(self.workers, len(writes))) as pool:
                    list(pool.map(lambda a: self._apply_safely(a, result), writes))
            else:
                for action in writes:
                    self._apply_safely(action, result)
            for action in rest:
                self._apply_safely(action, result)
        result.seconds = self.clock() - t0
        if not dry_run:
            self.metrics.passed(result.seconds, ok=not result.errors)
        self.log.event("pass", **result.summary())
        return result

    def _apply_safely(self, action: Action, result: PassResult) -> None:
        try:
            self._apply(action, result)
        except FeatxError as e:
            with self._lock:
                result.errors.append(f"{type(action).__name__} {action.model}: {e}")
                self.log.event("error", model=action.model, action=type(action).__name__.lower(), reason=str(e))

    def _apply(self, action: Action, result: PassResult) -> None:
        if isinstance(action, Create):
            uid = self.kube.create_job(action.job)
            with self._lock:
                if uid is not None:
                    result.created += 1
                    self.metrics.acted(action)
                    self._event(action)
                else:
                    result.existed += 1
                    self.log.event("exists", model=action.model, job=action.name, attempt=action.attempt,
                                   reason="another reconciler created it")
            if uid is not None:
                self._record(action, uid)
        elif isinstance(action, Delete):
            deleted = self.kube.delete_job(action.name)
            with self._lock:
                result.deleted += int(deleted)
                self._event(action)
        elif isinstance(action, GiveUp):
            if action.record:
                # put, not record_failure: keep the attempt number the Jobs counted
                record = FailureRecord(action.model, action.reason, "permanent", action.attempt)
                self.store.put_bytes(action.key.failure, record.to_json())
                result.gave_up += 1
            if action.keep:  # after the record: a kept Job without one reads as "record cleared, retry"
                self.kube.keep_job(action.keep, action.reason)
            if action.record or action.keep:  # it acted (once per give-up)
                self.metrics.acted(action)
                self._record(action, action.uid)
            self._event(action)
        else:
            self._event(action)

    def _record(self, action: Action, uid: str) -> None:
        """The action's Kubernetes Event on its Job; one that cannot be written is logged, the pass goes on."""
        event = event_for(action, self.kube.namespace, self.instance, uid=uid)
        if event is None:
            return
        try:
            self.kube.create_event(event)
        except Exception as e:  # noqa: BLE001 - an Event is a courtesy: the decision stands without it
            cause = str(e) if isinstance(e, FeatxError) else f"{type(e).__name__}: {e}"
            self.log.event("error", model=action.model, action="event", reason=" ".join(cause.split()))

    def _event(self, action: Action, dry_run: bool = False) -> None:
        extra = {"dry_run": True} if dry_run else {}
        if isinstance(action, Create):
            s = action.sizing
            self.log.event("create" if action.attempt == 1 else "retry", model=action.model, job=action.name,
                           attempt=action.attempt, gpu_class=s.class_name, gpus=s.gpus,
                           token_budget=s.token_budget, shards=format_indices(action.shards) or None,
                           reason=action.why, **extra)
        elif isinstance(action, Delete):
            self.log.event("delete", model=action.model, job=action.name, reason=action.reason, **extra)
        elif isinstance(action, GiveUp):
            key = ("give-up", action.model, str(action.attempt))
            if action.record or key not in self._logged:
                self._logged.add(key)
                self.log.event("give-up", model=action.model, attempt=action.attempt, reason=action.reason, **extra)
        else:
            key = (action.kind, action.model, action.reason)
            if key not in self._logged:  # one line per model and state, not one per pass
                self._logged.add(key)
                self.log.event(f"skip-{action.kind}", model=action.model, reason=action.reason or None, **extra)

    def watch(self, interval: float | None = None, stop: threading.Event | None = None,
              max_passes: int | None = None, health: Health | None = None) -> int:
        """Pass after pass until ``stop`` is set (or ``max_passes``). A pass that fails (API server
        or store unreachable or past its timeout, a bad setting, a bug) logs one ``error`` line
        with the cause and the next pass tries again; ``health`` (what the probes read) hears of
        every outcome."""
        stop = stop or threading.Event()
        interval = self.config.interval_s if interval is None else interval
        health = health or Health(FAIL_AFTER_INTERVALS * interval, self.clock)
        passes = 0
        while not stop.is_set():
            try:
                result = self.run_once()
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one pass
                cause = " ".join((str(e) if isinstance(e, FeatxError) else f"{type(e).__name__}: {e}").split())
                self.log.event("error", reason=cause, retry_in_s=interval)
                if featx_settings.DEBUG:
                    traceback.print_exc()
                health.failed(cause)
            else:
                errors = result.errors
                health.completed(f"{len(errors)} error(s), first: {errors[0]}" if errors else "")
            passes += 1
            if max_passes is not None and passes >= max_passes:
                break
            stop.wait(interval)
        return 0


def _failed(job: dict[str, Any]) -> bool:
    return any(c.get("type") == "Failed" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])
