"""One Kubernetes Job manifest per model and attempt, as a plain dict: the chart's Job template
(``run.yaml`` ``jobTemplate``) filled with the model's name, labels, command and GPU sizing.

- ``backoffLimit: 0``: every attempt is its own Job (the reconciler makes the next one at once,
  without the Job controller's pod back-off), so attempts are visible as Jobs.
- ``podFailurePolicy``: the exit codes whose failure policy says so (``featx.errors``: 2 usage,
  3 model missing, gated, unsupported) fail the Job at once (condition reason ``PodFailurePolicy``); a pod disrupted by preemption or a node
  drain is ignored (the Job makes a new pod, no attempt is spent).
- A sharded model (``Desired.layout``) gets one Indexed Job: one completion per shard to run
  (``--shard_indices``; pod ``k`` runs the ``k``-th through ``--completion_index
  $(JOB_COMPLETION_INDEX)``), ``parallelism`` pods at once, ``backoffLimitPerIndex`` retries of a
  shard in place, ``maxFailedIndexes`` = every index (one shard's failure never stops the others),
  and the policy per index: exit codes 2/3/4 fail the index at once (``FailIndex``), disruption is ignored.
- ``ttlSecondsAfterFinished`` (``job.ttlSecondsAfterFinished``): finished Jobs and their logs stay
  that long, then Kubernetes removes them; a given-up model's last Job loses it (``GiveUp.keep``).
- GPU: ``resources.limits[<class resource>] = gpus``; node affinity ``<memoryLabel> Gt memoryMiB-1``
  (GPU Feature Discovery labels device memory in MiB) plus the class's nodeSelector and tolerations.
Pure: the same inputs give the same manifest.
"""

from __future__ import annotations

import copy
from typing import Any

from featx.errors import FAIL_INDEX_EXIT_CODES, FAIL_JOB_EXIT_CODES
from featx.kube.config import Desired, RunConfig
from featx.kube.naming import job_name, label_value
from featx.pipeline.shards import format_indices
from featx.plan.sizing import GiB, Sizing

GROUP = "featx.io"
L_RELEASE, L_MODEL, L_MODELSET, L_ATTEMPT, L_CLASS = (f"{GROUP}/release", f"{GROUP}/model", f"{GROUP}/modelset",
                                                      f"{GROUP}/attempt", f"{GROUP}/gpu-class")
A_MODEL_ID, A_STEM, A_GPUS, A_TOKEN_BUDGET, A_BATCH, A_PEAK, A_SIZING = (
    f"{GROUP}/model-id", f"{GROUP}/stem", f"{GROUP}/gpus", f"{GROUP}/token-budget", f"{GROUP}/batch-size",
    f"{GROUP}/est-peak-gib", f"{GROUP}/sizing")
#: on a given-up model's last Job, whose TTL the controller removed: it stays until the failure record is cleared
A_GAVE_UP = f"{GROUP}/gave-up"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
CONTAINER = "extract"
#: An Indexed Job's pod's index, set by the Job controller; Kubernetes expands ``$(...)`` in args.
COMPLETION_INDEX = "$(JOB_COMPLETION_INDEX)"


def release_selector(release: str) -> str:
    """The label selector of every Job (and pod) of a release."""
    return f"{L_RELEASE}={label_value(release)}"


def extract_args(config: RunConfig, d: Desired, sizing: Sizing, attempt: int,
                 shards: tuple[int, ...] = ()) -> list[str]:
    """Arguments of ``featx extract`` for one model (the container command is ``featx extract``):
    with ``shards``, those of ``d.layout`` (one per pod of an Indexed Job)."""
    request = config.request
    args = ["--models", d.id, "--store", config.store, "--dataset", request.dataset]
    if request.subset:
        args += ["--subset", str(request.subset)]
    if d.spec.modality == "language" and request.caption_idx:
        args += ["--caption_idx", str(request.caption_idx)]
    if request.num_samples:
        args += ["--num_samples", str(request.num_samples)]
    args += ["--pool", d.pool]
    if sizing.batch_size:
        args += ["--batch_size", str(sizing.batch_size)]
    if sizing.token_budget:
        args += ["--token_budget", str(sizing.token_budget)]
    if d.spec.quantised(request.qlora):
        args.append("--qlora")
    if config.verify:  # the Job must redo what the controller found corrupt, not skip it by its listing
        args.append("--verify")
    if shards:
        assert d.layout is not None
        args += ["--num_shards", str(d.layout.num_shards), "--shard_indices", format_indices(shards),
                 "--completion_index", COMPLETION_INDEX]
    elif config.sharding.rows_per_shard:  # the row count is unknown here: the pod lays out and runs every shard
        args += ["--shard_rows", str(config.sharding.rows_per_shard)]
    args += ["--attempt", str(attempt), "--gpu_class", sizing.class_name, "--log_format", "json"]
    return args + list(config.extra_args)


def _affinity(sizing: Sizing) -> dict[str, Any] | None:
    c = sizing.gpu_class
    if c is None or not c.memory_label:
        return None
    term = {"matchExpressions": [{"key": c.memory_label, "operator": "Gt", "values": [str(c.memory_mib - 1)]}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def labels(config: RunConfig, d: Desired, sizing: Sizing, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "featx",
        "app.kubernetes.io/instance": label_value(config.release),
        "app.kubernetes.io/version": label_value(config.app_version),
        "app.kubernetes.io/component": "extract",
        "app.kubernetes.io/part-of": "featx",
        "app.kubernetes.io/managed-by": "featx-controller",
        L_RELEASE: label_value(config.release),
        L_MODEL: label_value(d.id),
        L_MODELSET: label_value(config.modelset_label),
        L_ATTEMPT: str(attempt),
        L_CLASS: label_value(sizing.class_name),
    }


def _indexed(config: RunConfig, shards: tuple[int, ...]) -> dict[str, Any]:
    """The Indexed Job's fields for running ``shards`` (see the module docstring)."""
    return {
        "completionMode": "Indexed", "completions": len(shards),
        "parallelism": min(config.sharding.parallelism, len(shards)),
        "backoffLimitPerIndex": config.sharding.backoff_limit_per_index, "maxFailedIndexes": len(shards),
        "podFailurePolicy": {"rules": [
            {"action": "FailIndex",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(FAIL_INDEX_EXIT_CODES)}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
    }


def render_job(config: RunConfig, d: Desired, sizing: Sizing, attempt: int,
               shards: tuple[int, ...] = ()) -> dict[str, Any]:
    """The Job for ``attempt`` of model ``d`` on ``sizing`` (which must fit); with ``shards`` (of
    ``d.layout``), the Indexed Job that runs them."""
    if not sizing.fits:
        raise ValueError(f"{d.id}: no GPU class fits ({sizing.reason}); nothing to render")
    if shards and d.layout is None:
        raise ValueError(f"{d.id}: shards {format_indices(shards)} without a shard layout; nothing to render")
    tpl = config.job_template
    name = job_name(config.release, d.stem, d.id, attempt)
    lab = labels(config, d, sizing, attempt)
    ann = {A_MODEL_ID: d.id, A_STEM: d.stem, A_GPUS: str(sizing.gpus),
           A_PEAK: f"{sizing.est_peak_bytes / GiB:.1f}", A_SIZING: sizing.reason}
    if sizing.batch_size:
        ann[A_BATCH] = str(sizing.batch_size)
    if sizing.token_budget:
        ann[A_TOKEN_BUDGET] = str(sizing.token_budget)
    if config.kueue_queue:
        lab[KUEUE_QUEUE] = config.kueue_queue
        if config.kueue_priority:
            lab[KUEUE_PRIORITY] = config.kueue_priority

    pod = copy.deepcopy(tpl["podSpec"])
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER)
    container["args"] = extract_args(config, d, sizing, attempt, shards)
    resources = container.setdefault("resources", {})
    c = sizing.gpu_class
    assert c is not None
    if c.resource:
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})[c.resource] = str(sizing.gpus)
    else:  # a CPU class: the estimate is the memory the pod needs
        need = f"{-(-sizing.est_peak_bytes // 2**20)}Mi"
        resources.setdefault("requests", {})["memory"] = need
    if c.container_memory_limit:  # the class's host memory: request = limit, so it always fits under
        for kind in ("requests", "limits"):
            resources.setdefault(kind, {})["memory"] = c.container_memory_limit
    selector = {**(pod.get("nodeSelector") or {}), **c.node_selector}
    if selector:
        pod["nodeSelector"] = selector
    else:
        pod.pop("nodeSelector", None)
    tolerations = list(pod.get("tolerations") or []) + [t for t in c.tolerations if t not in (pod.get("tolerations") or [])]
    if tolerations:
        pod["tolerations"] = tolerations
    else:
        pod.pop("tolerations", None)
    affinity = _affinity(sizing)
    if affinity:
        pod["affinity"] = affinity

    pod_labels = {k: v for k, v in lab.items() if k not in (KUEUE_QUEUE, KUEUE_PRIORITY)}
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(FAIL_JOB_EXIT_CODES)}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]},
        "template": {"metadata": {"labels": pod_labels,
                                  "annotations": {**(tpl.get("podAnnotations") or {}), A_MODEL_ID: d.id}},
                     "spec": pod},
    }
    if shards:
        del spec["backoffLimit"]  # per index instead
        spec.update(_indexed(config, shards))
    if tpl.get("activeDeadlineSeconds"):
        spec["activeDeadlineSeconds"] = int(tpl["activeDeadlineSeconds"])
    if tpl.get("ttlSecondsAfterFinished"):  # 0 = none: the controller deletes a committed model's Jobs itself
        spec["ttlSecondsAfterFinished"] = int(tpl["ttlSecondsAfterFinished"])
    if config.kueue_queue:
        spec["suspend"] = True  # Kueue admits (unsuspends) it when its quota allows
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": config.namespace, "labels": lab, "annotations": ann},
            "spec": spec}
