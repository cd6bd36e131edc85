"""What a Job (and its pod) says about an attempt, read from plain manifests (dicts in the API's
camelCase form). Pure: no API calls; the controller lists Jobs and Pods once per pass and passes
them here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from featx.errors import policy_for_exit
from featx.kube.jobs import A_GAVE_UP, A_GPUS, A_MODEL_ID, A_STEM, CONTAINER, L_ATTEMPT, L_CLASS

Phase = Literal["pending", "running", "succeeded", "failed"]
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
_EXIT_IN_MESSAGE = re.compile(r"exit code (\d+)")


@dataclass(frozen=True)
class ObservedJob:
    """One attempt at one model as the cluster shows it."""

    name: str
    model_id: str
    stem: str
    attempt: int
    gpu_class: str
    gpus: int
    phase: Phase
    reason: str = ""  # the Job's Failed condition reason: PodFailurePolicy, BackoffLimitExceeded, DeadlineExceeded
    message: str = ""
    exit_code: int | None = None  # of the extraction container, when a pod says so
    pod_reason: str = ""  # terminated.reason: Completed, Error, OOMKilled, ...
    deleting: bool = False
    pod_message: str = ""  # terminated.message: featx's one-line error (featx/cli/termination.py)
    ttl_s: int | None = None  # spec.ttlSecondsAfterFinished: Kubernetes deletes the Job that long after it finished
    uid: str = ""
    kept: bool = False  # the controller kept it as a given-up model's last Job (annotation featx.io/gave-up)

    @property
    def finished(self) -> bool:
        return self.phase in ("succeeded", "failed")

    @property
    def active(self) -> bool:
        return not self.finished and not self.deleting


def _true(conditions: Iterable[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == kind and c.get("status") == "True"), None)


def _severity(term: dict[str, Any]) -> int:
    """What a terminated container says of the whole attempt: one that cannot succeed on retry
    (2) outranks out of memory (1), which outranks any other failure (0) and a success (-1), so
    that an Indexed Job whose shards ended differently is judged by its worst one."""
    code = term.get("exitCode")
    policy = policy_for_exit(int(code)) if code is not None else None
    if policy is not None and policy.fails_job:
        return 2
    if (policy is not None and policy.kind == "oom") or term.get("reason") == "OOMKilled":
        return 1
    return -1 if code == 0 else 0


def _termination(pods: Iterable[dict[str, Any]]) -> tuple[int | None, str, str]:
    """(exit code, reason, message) of the extraction container of the most severe, then newest,
    terminated pod (``_severity``)."""
    best: tuple[int, str, dict[str, Any]] | None = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == CONTAINER and term:
                rank = (_severity(term), str(term.get("finishedAt") or ""))
                if best is None or rank >= best[:2]:
                    best = (*rank, term)
    if best is None:
        return None, "", ""
    term = best[2]
    code = term.get("exitCode")
    return (int(code) if code is not None else None), str(term.get("reason") or ""), str(term.get("message") or "")


def observe_job(job: dict[str, Any], pods: Iterable[dict[str, Any]] = ()) -> ObservedJob | None:
    """The attempt a featx Job stands for; None for a Job featx did not make (no model annotation)."""
    meta = job.get("metadata") or {}
    ann, lab = meta.get("annotations") or {}, meta.get("labels") or {}
    if A_MODEL_ID not in ann or A_STEM not in ann:
        return None
    status = job.get("status") or {}
    conditions = status.get("conditions") or []
    reason = message = ""
    if _true(conditions, "Complete"):
        phase: Phase = "succeeded"
    elif (failed := _true(conditions, "Failed")) is not None:
        phase, reason, message = "failed", str(failed.get("reason") or ""), str(failed.get("message") or "")
    elif (job.get("spec") or {}).get("suspend") or not status.get("active"):
        phase = "pending"
    else:
        phase = "running" if (status.get("ready") or 0) > 0 else "pending"
    exit_code, pod_reason, pod_message = _termination(pods) if phase == "failed" else (None, "", "")
    if exit_code is None and phase == "failed":
        m = _EXIT_IN_MESSAGE.search(message)  # "... failed with exit code 3 matching FailJob rule ..."
        exit_code = int(m.group(1)) if m else None
    try:
        attempt = int(lab.get(L_ATTEMPT, "1"))
    except ValueError:
        attempt = 1
    try:
        gpus = int(ann.get(A_GPUS, "1"))
    except ValueError:
        gpus = 1
    return ObservedJob(
        name=str(meta.get("name")), model_id=ann[A_MODEL_ID], stem=ann[A_STEM], attempt=attempt,
        gpu_class=str(lab.get(L_CLASS, "")), gpus=gpus, phase=phase, reason=reason,
        message=pod_message or message, exit_code=exit_code, pod_reason=pod_reason,
        pod_message=pod_message.strip().splitlines()[-1] if pod_message.strip() else "",
        deleting=bool(meta.get("deletionTimestamp")), ttl_s=(job.get("spec") or {}).get("ttlSecondsAfterFinished"),
        uid=str(meta.get("uid") or ""), kept=A_GAVE_UP in ann)


def pods_by_job(pods: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        lab = (pod.get("metadata") or {}).get("labels") or {}
        name = next((lab[k] for k in JOB_NAME_LABELS if k in lab), None)
        if name:
            out.setdefault(name, []).append(pod)
    return out


def observe(jobs: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]] = ()) -> list[ObservedJob]:
    by_job = pods_by_job(pods)
    out = []
    for job in jobs:
        o = observe_job(job, by_job.get((job.get("metadata") or {}).get("name", ""), ()))
        if o is not None:
            out.append(o)
    return out
