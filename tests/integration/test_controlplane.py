"""The test control plane behaves like a real cluster for Jobs on GPU nodes.

Proves the harness in localcluster/: the real scheduler places pods by node affinity and
extended resources, the real Job controller reacts to exit codes that PodRunner reports.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from kubernetes import client

from localcluster.controlplane import GPU_8X80GB, PodRunner, wait_until
from tests.cluster.fixtures import (  # noqa: F401 - pytest fixtures
    gpu_nodes,
    k8s_api,
    k8s_cluster,
    k8s_namespace,
    pod_runner,
    pod_runner_factory,
)

pytestmark = pytest.mark.k8s

# A100-40GB nodes report nvidia.com/gpu.memory=40960 (MiB), so "more than 40 GiB" is Gt 40960;
# Gt 40000 would also admit them.
MORE_THAN_40GIB = client.V1Affinity(
    node_affinity=client.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
            node_selector_terms=[
                client.V1NodeSelectorTerm(
                    match_expressions=[
                        client.V1NodeSelectorRequirement(key="nvidia.com/gpu.memory", operator="Gt", values=["40960"])
                    ]
                )
            ]
        )
    )
)


def gpu_job(
    name: str,
    script: str,
    gpus: int,
    *,
    affinity: client.V1Affinity | None = None,
    pod_failure_policy: client.V1PodFailurePolicy | None = None,
    env: list[client.V1EnvVar] | None = None,
) -> client.V1Job:
    container = client.V1Container(
        name="main",
        image="featx:test",
        command=["sh", "-c", script],
        env=env,
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
    )
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            pod_failure_policy=pod_failure_policy,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(restart_policy="Never", containers=[container], affinity=affinity)
            ),
        ),
    )


def wait_job_condition(api: client.ApiClient, namespace: str, name: str, timeout: float = 60) -> Any:
    """The Job's first terminal condition (Complete or Failed) once it has one."""
    batch = client.BatchV1Api(api)

    def terminal() -> Any:
        job = batch.read_namespaced_job_status(name, namespace)
        for cond in job.status.conditions or []:
            if cond.type in ("Complete", "Failed") and cond.status == "True":
                return cond
        return None

    return wait_until(terminal, timeout, f"Job {namespace}/{name} to finish")


def job_pods(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={name}").items


def test_one_gpu_job_runs_on_80gb_node_and_completes(
    k8s_api: client.ApiClient, gpu_nodes: list[str], k8s_namespace: str, pod_runner: PodRunner  # noqa: F811
) -> None:
    client.BatchV1Api(k8s_api).create_namespaced_job(
        k8s_namespace, gpu_job("ok", "echo hello; exit 0", 1, affinity=MORE_THAN_40GIB)
    )

    cond = wait_job_condition(k8s_api, k8s_namespace, "ok")

    assert cond.type == "Complete"
    (pod,) = job_pods(k8s_api, k8s_namespace, "ok")
    assert pod.spec.node_name in GPU_8X80GB.node_names()
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.reason == "Completed"
    assert pod_runner.wait_for_result(pod.metadata.name, 5).exit_code == 0
    assert pod_runner.logs[pod.metadata.name] == "hello\n"


def test_exit_code_in_pod_failure_policy_fails_job(
    k8s_api: client.ApiClient, gpu_nodes: list[str], k8s_namespace: str, pod_runner: PodRunner  # noqa: F811
) -> None:
    policy = client.V1PodFailurePolicy(
        rules=[
            client.V1PodFailurePolicyRule(
                action="FailJob",
                on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                    container_name="main", operator="In", values=[3]
                ),
            )
        ]
    )
    client.BatchV1Api(k8s_api).create_namespaced_job(
        k8s_namespace, gpu_job("bad-input", "exit 3", 1, pod_failure_policy=policy)
    )

    cond = wait_job_condition(k8s_api, k8s_namespace, "bad-input")

    assert (cond.type, cond.reason) == ("Failed", "PodFailurePolicy")
    (pod,) = job_pods(k8s_api, k8s_namespace, "bad-input")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code, terminated.reason) == ("Failed", 3, "Error")


def test_sixteen_gpu_job_stays_pending(
    k8s_api: client.ApiClient, gpu_nodes: list[str], k8s_namespace: str, pod_runner: PodRunner  # noqa: F811
) -> None:
    client.BatchV1Api(k8s_api).create_namespaced_job(k8s_namespace, gpu_job("too-big", "exit 0", 16))
    core = client.CoreV1Api(k8s_api)

    def failed_scheduling() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(k8s_namespace).items
        return [e for e in events if e.reason == "FailedScheduling"]

    events = wait_until(failed_scheduling, 30, "a FailedScheduling event")

    assert "Insufficient nvidia.com/gpu" in events[0].message
    (pod,) = job_pods(k8s_api, k8s_namespace, "too-big")
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    (scheduled,) = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    job = client.BatchV1Api(k8s_api).read_namespaced_job_status("too-big", k8s_namespace)
    assert not [c for c in job.status.conditions or [] if c.type in ("Complete", "Failed")]
    assert pod_runner.results == {}


def test_pod_runner_resolves_env_and_maps_command(
    k8s_api: client.ApiClient, gpu_nodes: list[str], k8s_namespace: str, pod_runner_factory: Any  # noqa: F811
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        k8s_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="creds"), data={"key": base64.b64encode(b"s3cr3t").decode()}),
    )
    seen: list[list[str]] = []

    def command_map(argv: list[str]) -> list[str]:
        seen.append(argv)
        return ["sh", "-c", 'echo "$TOKEN $POD_NAME $NS $MODEL $FROM_CALLER"; kill -9 $$']

    runner = pod_runner_factory(k8s_namespace, command_map=command_map, extra_env={"FROM_CALLER": "caller"})
    env = [
        client.V1EnvVar(
            name="TOKEN",
            value_from=client.V1EnvVarSource(secret_key_ref=client.V1SecretKeySelector(name="creds", key="key")),
        ),
        client.V1EnvVar(
            name="POD_NAME",
            value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")),
        ),
        client.V1EnvVar(
            name="NS",
            value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path="metadata.namespace")),
        ),
        client.V1EnvVar(name="MODEL", value="gpt2"),
    ]
    job = gpu_job("env", "unused", 1, env=env)
    job.spec.template.spec.containers[0].command = ["featx", "extract"]
    job.spec.template.spec.containers[0].args = ["--model", "$(MODEL)"]
    client.BatchV1Api(k8s_api).create_namespaced_job(k8s_namespace, job)

    cond = wait_job_condition(k8s_api, k8s_namespace, "env")

    assert cond.type == "Failed"
    (pod,) = job_pods(k8s_api, k8s_namespace, "env")
    name = pod.metadata.name
    assert seen == [["featx", "extract", "--model", "gpt2"]]
    result = runner.wait_for_result(name, 5)
    assert runner.logs[name] == f"s3cr3t {name} {k8s_namespace} gpt2 caller\n"
    # Killed by a signal is exit 128 + 9, and no more: only a kernel's OOM killer on a real node
    # says OOMKilled (tests/e2e).
    assert (result.exit_code, result.reason) == (137, "Error")
    assert pod.status.container_statuses[0].state.terminated.reason == "Error"
