"""The Kubernetes Event (events.k8s.io/v1) a decision that acts records on the Job it concerns, so
that ``kubectl describe job`` and ``kubectl get events`` say why featx created, retried or gave up
a Job. Pure: the controller (``featx.kube.controller``) builds them here and writes them through the
client; an Event that cannot be written is logged and never fails a pass.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from featx.kube.reconcile import Action, Create, GiveUp

#: ``reportingController`` of featx's Events (a domain-qualified name, as the API asks).
REPORTING_CONTROLLER = "featx.io/controller"
#: The most characters of an Event's note the API accepts.
NOTE_MAX = 1024


def event_for(action: Action, namespace: str, instance: str, now: datetime | None = None,
              uid: str = "") -> dict[str, Any] | None:
    """The Event of ``action`` (None for one that records none: Skip, Delete, a give-up already
    recorded). ``uid`` is the Job's, so that ``kubectl describe job`` finds it; ``instance`` the
    controller's pod."""
    if isinstance(action, Create):
        s = action.sizing
        job, reason, verb, kind = action.name, action.reason, "Create", "Normal"
        note = f"model {action.model}, attempt {action.attempt}, GPU class {s.class_name} x{s.gpus}: {action.why}"
    elif isinstance(action, GiveUp) and (action.record or action.keep):
        job, reason, verb, kind = action.job, "GaveUp", "GiveUp", "Warning"
        note = f"model {action.model}, attempt {action.attempt}, GPU class {action.gpu_class}: {action.reason}"
    else:
        return None
    now = now or datetime.now(timezone.utc)
    when = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    regarding = {"apiVersion": "batch/v1", "kind": "Job", "name": job, "namespace": namespace}
    if uid:
        regarding["uid"] = uid
    return {"apiVersion": "events.k8s.io/v1", "kind": "Event",
            # named as client-go's recorder names them: <object>.<unix nanoseconds, hex>
            "metadata": {"name": f"{job}.{int(now.timestamp() * 1e9):x}", "namespace": namespace},
            "eventTime": when, "reportingController": REPORTING_CONTROLLER, "reportingInstance": instance[:128],
            "action": verb, "reason": reason, "type": kind, "regarding": regarding,
            "note": note if len(note) <= NOTE_MAX else note[:NOTE_MAX - 3] + "..."}
