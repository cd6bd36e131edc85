"""Job columns of ``featx status --namespace NS --release REL``: each model's latest Job, its
attempt and phase (``running``/``pending`` replace the store's ``missing`` while a Job is active)."""

from __future__ import annotations

from typing import Any, Iterable

from featx.kube.observe import ObservedJob


def annotate(rows: list[dict[str, Any]], observed: Iterable[ObservedJob]) -> list[dict[str, Any]]:
    """Add ``job``, ``attempt`` (Job attempt) and ``phase`` to rows that carry a ``stem``."""
    latest: dict[str, ObservedJob] = {}
    for j in observed:
        if j.stem not in latest or j.attempt > latest[j.stem].attempt:
            latest[j.stem] = j
    for row in rows:
        j = latest.get(row.get("stem", ""))
        row["job"] = j.name if j else ""
        row["phase"] = j.phase if j else ""
        if j:
            row["attempts"] = max(int(row.get("attempts") or 0), j.attempt)
            if row["state"] in ("missing", "stale", "failed", "corrupt") and j.active:
                row["state"] = j.phase  # running | pending: a Job is on it
            if j.phase == "failed" and not row.get("reason"):
                row["reason"] = j.reason or (f"exit code {j.exit_code}" if j.exit_code is not None else "")
    return rows


def job_rows(rows: list[dict[str, Any]], namespace: str | None, release: str, kubeconfig: str | None = None,
             context: str | None = None) -> list[dict[str, Any]]:
    """Read the release's Jobs (and, for failed ones, their pods) and annotate ``rows``."""
    from featx.kube.client import KubeClient
    from featx.kube.controller import _failed
    from featx.kube.jobs import release_selector
    from featx.kube.observe import observe

    kube = KubeClient.connect(namespace, kubeconfig, context)
    selector = release_selector(release)
    jobs = kube.list_jobs(selector)
    pods = kube.list_pods(selector) if any(_failed(j) for j in jobs) else []
    return annotate(rows, observe(jobs, pods))
