"""The reconciler's decisions: a pure function from what is wanted, what the store holds and what
the cluster shows to a list of actions. Purely computational, no side effects: the controller
(``featx.kube.controller``) reads the three inputs fresh on every pass and applies the actions.

Per model, numbered steps, the first that applies wins (level-triggered, as in kueue's reconciler):

1. committed in the store with the run's identity -> nothing to run; with ``job.ttlSecondsAfterFinished``
   0 its finished Jobs are deleted (the manifest is the record), else Kubernetes removes them after
   the TTL, so that ``kubectl logs`` still works meanwhile. A file committed with other inputs (``stale``: rows, caption
   index, init, format...) is not done: the steps below redo it.
2. a Job of it is pending, running or being deleted -> leave it alone.
3. its last attempt finished without a commit -> if it was kept as a given-up model's last Job
   and the store no longer holds the permanent failure record (the user cleared it to retry), delete
   the model's finished Jobs (the next pass starts again at attempt 1); else classify the failure:
   a. permanent (exit code 2/3, or the Job failed by its podFailurePolicy) -> give up now;
   b. the attempts limit is reached -> give up with the last attempt's reason;
   c. out of memory (exit code 4, or OOMKilled) -> next attempt on the next larger option
      (``featx.plan.sizing.escalate``); give up when there is none;
   d. anything else (transient errors, a Job that "succeeded" without committing or left a stale
      file -- it may have run before the run's options changed --, a deadline)
      -> next attempt on the same GPU class.
4. no Job and a permanent failure recorded in the store -> skip (delete the record to retry).
5. no Job -> first attempt, sized by ``featx.plan.sizing.choose``.
6. no enabled GPU class holds it -> skip with the reason (a configuration matter, not recorded).
7. the concurrency limit (active Jobs of the release) is reached -> wait for the next pass.

A sharded model (``Desired.layout``) is judged shard by shard: ``done`` when every shard is; each
attempt is one Indexed Job over the shards not done when it is created (committed shards never
run again), so an attempt that ran out of memory moves only the remaining shards up a class.

Giving up writes a permanent failure record to the store once (``GiveUp.record``) and removes the
TTL of the model's last Job (``GiveUp.keep``), so that it stays for ``kubectl logs`` until the
record is cleared. Job names are deterministic per release + artifact +
attempt, so a racing or restarted reconciler creates the same names and the API refuses duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Mapping, Union

from featx.errors import FailureKind, policy_for_exit
from featx.kube.config import Desired
from featx.kube.naming import job_name
from featx.kube.observe import ObservedJob
from featx.pipeline.request import missing_shards
from featx.pipeline.shards import format_indices
from featx.plan.sizing import GpuClass, Sizing, choose, escalate, size_on
from featx.store.keys import ArtifactKey
from featx.store.records import FailureRecord, StoredState

#: Created: a first attempt; Retried: the next after a failure; Redone: a first attempt at a stale file.
CreateReason = Literal["Created", "Retried", "Redone"]
SkipKind = Literal["done", "running", "pending", "deleting", "failed", "unsized", "waiting"]


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    model: str
    attempt: int
    name: str
    sizing: Sizing
    job: dict[str, Any] = field(repr=False, hash=False, compare=False)
    why: str = ""  # "first attempt" or the previous attempt's failure
    reason: CreateReason = "Created"  # of its Kubernetes Event (featx.kube.events)
    cause: str = ""  # a retry's: the previous attempt's failure kind (oom, transient)
    shards: tuple[int, ...] = ()  # a sharded model's: the shards its Indexed Job runs


@dataclass(frozen=True)
class Delete:
    model: str
    name: str
    reason: str


@dataclass(frozen=True)
class GiveUp:
    model: str
    key: ArtifactKey
    attempt: int
    reason: str
    record: bool = True  # False when the store already holds a permanent failure record
    keep: str = ""  # the last Job, whose TTL is to be removed so that it stays ("" = it stays already)
    job: str = ""  # the last Job (its Event goes there)
    cause: str = "permanent"  # permanent (cannot succeed on retry), attempts (the limit), oom (no larger class)
    uid: str = ""
    gpu_class: str = ""


@dataclass(frozen=True)
class Skip:
    model: str
    kind: SkipKind
    reason: str = ""


Action = Union[Create, Delete, GiveUp, Skip]


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    reason: str


@dataclass(frozen=True)
class Settings:
    """Policy as data. ``render(desired, sizing, attempt, shards) -> Job manifest``
    (``featx.kube.jobs``), or None for a bare manifest holding only the name (tests of the
    decisions alone)."""

    attempts: int = 3
    concurrency: int = 10
    classes: tuple[GpuClass, ...] = ()
    qlora: bool = False
    batch_size: int | None = None
    release: str = "featx"
    ttl_s: int = 0  # the Jobs' ttlSecondsAfterFinished; 0 = delete a committed model's finished Jobs
    render: Callable[[Desired, Sizing, int, tuple[int, ...]], dict[str, Any]] | None = field(default=None,
                                                                                          compare=False)


# -- classification (pure helpers) ----------------------------------------------------------


def classify(job: ObservedJob, state: StoredState | None) -> Failure:
    """Why a finished, uncommitted attempt failed, and whether retrying can help."""
    record = _failure(state)
    said = f": {record.reason}" if record is not None and record.reason else ""
    # else the container's termination message: featx's one line (an error, or what a stop signal left)
    told = said or (f": {job.pod_message}" if job.pod_message else "")
    if job.phase == "succeeded":
        if state is not None and state.state == "stale":
            return Failure("transient", f"the Job completed but the store holds a stale file ({state.reason})")
        return Failure("transient", "the Job completed but committed no output to the store")
    code = f"exit code {job.exit_code}" if job.exit_code is not None else "no exit code"
    where = f" ({job.pod_reason})" if job.pod_reason and job.pod_reason not in ("Error",) else ""
    policy = policy_for_exit(job.exit_code)
    if job.reason == "PodFailurePolicy" or (policy is not None and policy.fails_job):
        return Failure("permanent", f"cannot succeed on retry ({code}){told}")
    if (policy is not None and policy.kind == "oom") or job.pod_reason == "OOMKilled":
        return Failure("oom", f"out of memory on {job.gpus}x {job.gpu_class} ({code}{where}){said}")
    if job.reason == "DeadlineExceeded":
        return Failure("transient", f"ran longer than the Job's activeDeadlineSeconds{said}")
    return Failure("transient", f"{code}{where}{told or (f': {job.message}' if job.message else '')}")


def _failure(state: StoredState | None) -> FailureRecord | None:
    """The model's failure record: of a model with nothing committed, or with some of its shards."""
    return state.failure if state is not None and state.state in ("failed", "missing") else None


def _recorded_permanent(state: StoredState | None) -> bool:
    record = _failure(state)
    return record is not None and record.kind == "permanent"


# -- the decision ---------------------------------------------------------------------------


def decide(desired: Iterable[Desired], committed: Mapping[str, StoredState], observed: Iterable[ObservedJob],
           settings: Settings) -> list[Action]:
    """Actions that move the cluster toward "every desired model committed". Pure."""
    observed = list(observed)
    by_stem: dict[str, list[ObservedJob]] = {}
    for j in observed:
        by_stem.setdefault(j.stem, []).append(j)
    budget = settings.concurrency - sum(j.active for j in observed)
    actions: list[Action] = []

    def create(d: Desired, sizing: Sizing, attempt: int, why: str, reason: CreateReason, cause: str = "",
               shards: tuple[int, ...] = ()) -> None:
        nonlocal budget
        # 6. no enabled class holds the model: a configuration matter, nothing to record
        if not sizing.fits:
            actions.append(Skip(d.id, "unsized", sizing.reason))
            return
        # 7. concurrency limit: wait for a slot
        if budget <= 0:
            actions.append(Skip(d.id, "waiting", f"concurrency limit {settings.concurrency} reached"))
            return
        budget -= 1
        name = job_name(settings.release, d.stem, d.id, attempt)
        job = settings.render(d, sizing, attempt, shards) if settings.render else {"metadata": {"name": name}}
        if shards:
            assert d.layout is not None
            why += f"; shards {format_indices(shards)} of {d.layout.num_shards}"
        actions.append(Create(d.id, attempt, job["metadata"]["name"], sizing, job, why, reason, cause, shards))

    for d in desired:
        jobs = sorted(by_stem.get(d.stem, ()), key=lambda j: j.attempt)
        d = d.in_store(committed)  # a sharded model continues the layout its committed shards have
        layout = d.layout
        state = d.judge(committed)  # one file, or every row shard
        shards = missing_shards(committed, d.stem, d.identity, layout.num_shards) if layout else ()

        # 1. committed with the run's identity: nothing to run; clean up its finished Jobs
        if state.state == "done":
            if not settings.ttl_s:  # else Kubernetes removes them after the TTL
                actions += [Delete(d.id, j.name, "model is committed") for j in jobs if j.finished and not j.deleting]
            actions.append(Skip(d.id, "done"))
            continue

        # 2. an attempt is in flight (or its Job is going away): leave it alone
        live = [j for j in jobs if not j.finished]
        if live:
            j = live[-1]
            kind: SkipKind = "deleting" if j.deleting else ("running" if j.phase == "running" else "pending")
            actions.append(Skip(d.id, kind, f"Job {j.name} (attempt {j.attempt})"))
            continue

        # 3. the last attempt finished without a commit
        if jobs:
            last = jobs[-1]
            record = not _recorded_permanent(state)
            # the given-up model's record was cleared: start over
            if last.kept and record:
                actions += [Delete(d.id, j.name, "its failure record was cleared: retry from attempt 1")
                            for j in jobs if not j.deleting]
                continue
            failure = classify(last, state)

            def give_up(reason: str, cause: str) -> None:
                keep = last.name if last.ttl_s is not None or not last.kept else ""
                actions.append(GiveUp(d.id, d.key, last.attempt, reason, record, keep, last.name, cause, last.uid,
                                      last.gpu_class))

            # 3a. cannot succeed on retry
            if failure.kind == "permanent":
                give_up(failure.reason, "permanent")
                continue
            # 3b. attempts limit
            if last.attempt >= settings.attempts:
                give_up(f"gave up after {last.attempt} attempt(s); last: {failure.reason}", "attempts")
                continue
            # 3c. out of memory: a larger option
            if failure.kind == "oom":
                sizing = escalate(d.spec, settings.classes, last.gpu_class, last.gpus, settings.qlora,
                                  batch_size=settings.batch_size)
                if not sizing.fits:
                    give_up(f"{failure.reason}; no larger GPU class is configured", "oom")
                    continue
            # 3d. anything else: the same class again
            else:
                sizing = size_on(d.spec, settings.classes, last.gpu_class, last.gpus, settings.qlora,
                                 batch_size=settings.batch_size)
            create(d, sizing, last.attempt + 1, f"attempt {last.attempt} failed: {failure.reason}", "Retried",
                   failure.kind, shards)
            continue

        # 4. no Job, and a permanent failure on record
        if _recorded_permanent(state):
            assert state.failure is not None
            actions.append(Skip(d.id, "failed", state.failure.reason))
            continue

        # 5. first attempt
        sizing = choose(d.spec, settings.classes, settings.qlora, batch_size=settings.batch_size)
        create(d, sizing, 1, "first attempt" if state.state == "missing"
               else f"store says {state.state}: {state.reason}".rstrip(": "),
               "Redone" if state.state == "stale" else "Created", shards=shards)
    return actions
