"""featx's images as real pods: the smoke modelset through scripts/local-deploy.sh, then faults a
container decides (the kernel's OOM killer, a killed or deleted pod, a model that does not exist).

What only a real node shows, and is asserted here: the image's user and read-only root, Pod
Security admission of the real pod specs, memory limits enforced by the kernel (``OOMKilled``),
``kubectl logs`` through the kubelet, termination messages, in-cluster DNS and Services (the
controller reaches the API server and SeaweedFS from its pod).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from featx.catalog import load_modelset
from localcluster.controlplane import wait_until
from tests.e2e.conftest import NS, STORE, Kubectl, install_release, s3_env
from tests.helpers import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.k8s]

SMOKE = len(load_modelset("smoke").models)
ROWS = 64  # featx-sample
CAPTURED = Path(__file__).parent / "captured-logs.txt"  # the lines the README's troubleshooting table quotes


def featx_on_host(kubectl: Kubectl, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "featx.cli.main", *args], capture_output=True, text=True,
                          env=kubectl.env | s3_env(kubectl), timeout=300, cwd=REPO)


def load_all(kubectl: Kubectl, store: str, models: list[str]) -> dict[str, tuple[int, ...]]:
    """Each model's file read back from the in-cluster store by featx.load (sha256 checked):
    (rows, layers), for stacked features and the convnets' list form alike."""
    code = (
        "import sys, json, featx\n"
        "out = {m: [len(f.layers[0]), len(f.layers)] for m in sys.argv[2:]"
        " for f in [featx.load(m, sys.argv[1], dataset='featx-sample', subset='default')]}\n"
        "print(json.dumps(out))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, store, *models], capture_output=True, text=True,
                       env=kubectl.env | s3_env(kubectl), timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return {k: tuple(v) for k, v in json.loads(p.stdout).items()}


def terminated(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    for cs in (pod or {}).get("status", {}).get("containerStatuses") or []:
        if cs["name"] == "extract" and "terminated" in (cs.get("state") or {}):
            return cs["state"]["terminated"]
    return None


# -- the smoke modelset, deployed as `make local-kind` does ---------------------------------------


def test_local_deploy_brings_every_smoke_model_to_done(deployed):
    proc = deployed.proc
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.startswith("done=")][-1]
    assert f"done={SMOKE}" in last and "failed=0" in last and "missing=0" in last, last


def test_every_next_command_it_prints_works(kubectl, deployed):
    """The "Next:" block, pasted into a shell as printed (the followed log is read, not followed; the
    port-forward gets a moment; the cluster is not removed): each command succeeds, and the Jobs and
    logs of a committed model are still there (job.ttlSecondsAfterFinished)."""
    block = deployed.proc.stdout.split("\nNext:\n", 1)[1]
    # pasted as printed: a comment line does nothing, and the cluster is not removed (`make ...-down`)
    lines = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith(("make ", "#"))]
    assert lines[0].startswith("export KUBECONFIG=/") or lines[0].startswith("kubectl config use-context ")
    script = ["set -euo pipefail"]
    for line in lines:
        line = re.sub(r" -f(\s|$)", r" --tail=3\1", line)  # `logs deploy/featx -f` follows forever
        script.append(f"echo '>>> {line.split('#')[0].strip()}'; {line}")
        if line.endswith("&"):
            script.append("trap 'kill %1' EXIT; sleep 3")
    env = kubectl.env | {"PATH": f"{Path(sys.executable).parent}:{kubectl.env['PATH']}"}
    p = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    outputs = dict(re.findall(r">>> (.*)\n((?:(?!>>> ).*\n)*)", p.stdout))
    jobs = next(v for k, v in outputs.items() if " get jobs " in k)
    assert "featx-smoke_gpt2" in jobs, jobs  # the model label of its Job
    logs = next(v for k, v in outputs.items() if "featx.io/model=featx-smoke_gpt2" in k)
    assert '"event"' in logs, logs
    assert outputs and all(v.strip() for k, v in outputs.items() if not k.startswith(("export", "kubectl config"))
                           and "port-forward" not in k), outputs


def test_helm_test_passes_and_fails_in_one_line_with_wrong_credentials(kubectl, deployed, tmp_path):
    out = kubectl.helm("test", "featx", "-n", NS, "--logs", "--timeout", "5m")
    assert "Phase:          Succeeded" in out or "Phase: Succeeded" in " ".join(out.split()), out
    assert f"ok  store {STORE}: reachable and writable" in out and "ok  controller http://featx:8080/readyz: ok" in out
    rel = install_release(kubectl, "featx-badkeys", ["featx-smoke/gpt2"], {"controller": {"replicas": 0}}, tmp_path)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "featx-s3", "namespace": rel.namespace},
              "stringData": {"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}}
    kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    p = subprocess.run(["helm", "test", "featx", "-n", rel.namespace, "--logs", "--timeout", "3m"],
                       capture_output=True, text=True, env=kubectl.env, timeout=300, cwd=REPO)
    assert p.returncode != 0
    pod = kubectl.json("-n", rel.namespace, "get", "pod", "featx-test")
    (status,) = pod["status"]["containerStatuses"]
    (line,) = status["state"]["terminated"]["message"].strip().splitlines()  # featx's one line
    assert line.startswith("featx: error: s3://featx-features/featx-badkeys: access denied"), line
    assert "wrong-secret" not in p.stdout + p.stderr


def test_the_namespace_enforces_pod_security_restricted(kubectl, deployed):
    privileged = kubectl("-n", NS, "run", "privileged", "--image=featx-cpu:dev", "--image-pull-policy=Never",
                         "--dry-run=server", "--overrides",
                         '{"spec": {"containers": [{"name": "privileged", "image": "featx-cpu:dev",'
                         ' "securityContext": {"privileged": true}}]}}', check=False)
    assert 'violates PodSecurity "restricted:latest"' in privileged, privileged


def test_controller_is_the_charts_deployment_running_as_the_images_user(kubectl, deployed):
    deploy = kubectl.json("-n", NS, "get", "deploy", "featx")
    assert deploy["status"].get("readyReplicas") == 1
    (pod,) = kubectl.json("-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=controller")["items"]
    assert pod["spec"]["nodeName"] == "featx-node" and pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == "featx"
    assert kubectl("-n", NS, "exec", "deploy/featx", "--", "id", "-u").strip() == "10001"
    write = kubectl("-n", NS, "exec", "deploy/featx", "--", "touch", "/opt/venv/x", check=False)
    assert "Read-only file system" in write, write


def test_jobs_ran_on_the_real_node_with_a_gpu_request(deployed):
    pods = list(deployed.pods.pods.values())
    assert len({p["metadata"]["labels"]["featx.io/model"] for p in pods}) == SMOKE
    assert {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")} == {"featx-node"}
    for pod in pods:
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert pod["metadata"]["labels"]["featx.io/gpu-class"] == "h200-141gb"
    done = [terminated(p) for p in pods if p["status"].get("phase") == "Succeeded"]
    assert done and all(t is not None and t["exitCode"] == 0 for t in done)


def test_featx_status_agrees_and_every_file_loads_with_its_checksum(kubectl, deployed):
    in_pod = kubectl("-n", NS, "exec", "deploy/featx", "--", "featx", "status", "--store", STORE,
                     "--modelset", "smoke", "--dataset", "featx-sample", "--json")
    rows = json.loads(in_pod)
    assert [r["state"] for r in rows] == ["done"] * SMOKE
    on_host = featx_on_host(kubectl, "status", "--store", STORE, "--modelset", "smoke", "--dataset",
                            "featx-sample", "--json")
    assert on_host.returncode == 0, on_host.stderr
    assert {r["id"]: r["state"] for r in json.loads(on_host.stdout)} == {r["id"]: "done" for r in rows}
    shapes = load_all(kubectl, STORE, [r["id"] for r in rows])
    assert {s[0] for s in shapes.values()} == {ROWS}, shapes


def test_kubectl_logs_show_the_lines_the_readme_promises(kubectl, deployed):
    controller = kubectl("-n", NS, "logs", "deploy/featx")
    assert re.search(r"\bcreate\b.*model=featx-smoke/gpt2", controller), controller[-2000:]
    assert not re.search(r"\bdelete\b.*model is committed", controller), controller[-2000:]  # the TTL's job
    committed = {name: text for name, text in deployed.pods.logs.items() if '"event": "committed"' in text}
    assert committed, "no extraction pod's log was taken"
    pod, extract = sorted(committed.items())[0]
    assert '"event": "start"' in extract, extract[-2000:]
    CAPTURED.write_text(
        "# kubectl -n featx logs deploy/featx (first lines)\n" + "\n".join(controller.splitlines()[:8])
        + f"\n# kubectl -n featx logs {pod}\n" + extract
    )


# -- faults -----------------------------------------------------------------------------------


def test_a_container_over_its_memory_limit_is_oomkilled_and_retried_on_a_larger_class(kubectl, deployed, tmp_path):
    classes = [
        {"name": "small", "enabled": True, "memoryMiB": 100000, "resource": "nvidia.com/gpu", "maxPerNode": 8,
         "memoryLabel": "nvidia.com/gpu.memory", "containerMemoryLimit": "200Mi"},
        {"name": "large", "enabled": True, "memoryMiB": 143771, "resource": "nvidia.com/gpu", "maxPerNode": 8,
         "memoryLabel": "nvidia.com/gpu.memory", "containerMemoryLimit": "3Gi"},
    ]
    rel = install_release(kubectl, "featx-oom", ["featx-smoke/gpt2"], {"gpuClasses": classes, "attempts": 3}, tmp_path)
    with rel.pods:
        rel.wait(lambda s: s == {"featx-smoke/gpt2": "done"}, 600, "gpt2 done after an OOM")
    first = rel.pods.find("featx-smoke_gpt2", 1)
    assert first is not None and first["metadata"]["labels"]["featx.io/gpu-class"] == "small"
    assert (terminated(first)["reason"], terminated(first)["exitCode"]) == ("OOMKilled", 137)
    second = rel.pods.find("featx-smoke_gpt2", 2)
    assert second is not None and second["metadata"]["labels"]["featx.io/gpu-class"] == "large"
    assert second["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"
    retries = [line for line in rel.controller_log().splitlines() if re.search(r"\bretry\b.*gpu_class=large", line)]
    assert retries
    # `kubectl get events` on the Jobs: the first created, the second retried on the larger class
    by_attempt = {j["metadata"]["labels"]["featx.io/attempt"]: j["metadata"]["name"] for j in rel.jobs()}
    assert [e[:2] for e in rel.job_events(by_attempt["1"])] == [("Created", "Normal")]
    (retried,) = rel.job_events(by_attempt["2"])
    assert retried[:2] == ("Retried", "Normal") and "attempt 2" in retried[2] and "large" in retried[2], retried
    with CAPTURED.open("a") as f:
        f.write(f"# OOMKilled, then: kubectl -n featx logs deploy/featx\n{retries[0]}\n")
    assert load_all(kubectl, f"s3://featx-features/{rel.prefix}", ["featx-smoke/gpt2"])["featx-smoke/gpt2"][0] == ROWS


def test_killed_or_deleted_pods_are_retried_and_a_missing_model_fails_once(kubectl, deployed, local_cluster, tmp_path):
    models = ["featx-smoke/gpt2", "featx-smoke/opt", "featx-test/no-such-model"]
    node = local_cluster.node

    def stop_first_attempts() -> dict[str, str]:
        """SIGSTOP the extraction container of gpt2's and opt's first attempt the moment containerd
        starts it, watching containerd itself (a tiny model is extracted seconds after its pod
        starts, faster than the API shows it running): the faults below then find featx mid-run."""
        stopped: dict[str, str] = {}
        seen: set[str] = set()

        def running() -> list[str]:
            """Tasks containerd reports RUNNING: a task still being created is in runc's init, and
            stopping it there makes the kubelet's start fail (StartError, 128) instead of featx."""
            rows = node.ctr("tasks", "ls", timeout=30).stdout.decode().splitlines()[1:]
            return [cols[0] for cols in map(str.split, rows) if cols[-1:] == ["RUNNING"]]

        def poll() -> bool:
            for cid in running():
                if cid in seen:
                    continue
                labels = json.loads(node.ctr("containers", "info", cid, timeout=30).stdout)["Labels"]
                pod = labels.get("io.kubernetes.pod.name", "")
                if labels.get("io.kubernetes.pod.namespace") != "featx-faults" or \
                        labels.get("io.kubernetes.container.name") != "extract":
                    seen.add(cid)
                    continue
                target = next((m for m in ("gpt2", "opt") if f"-featx-smoke-{m}-" in pod and "-a1-" in pod), None)
                if target is None:
                    seen.add(cid)
                    continue
                node.ctr("tasks", "kill", "-s", "SIGSTOP", cid, timeout=30)
                seen.add(cid)
                stopped[target] = cid
            return len(stopped) == 2

        wait_until(poll, 300, "the first containers of gpt2 and opt to start", 0.05)
        return stopped

    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(stop_first_attempts)
        rel = install_release(kubectl, "featx-faults", models, {"concurrency": 3, "attempts": 3}, tmp_path)
        stopped = stopping.result()

    with rel.pods:
        # SIGKILL the container's process (no OOM): an ordinary retry on the same class.
        node.ctr("tasks", "kill", "-s", "SIGKILL", stopped["gpt2"])
        # Delete the running pod (what `kubectl delete` and node drains do): the kubelet's SIGTERM,
        # then SIGKILL, find featx mid-run; retried too.
        deleted = json.loads(node.ctr("containers", "info", stopped["opt"]).stdout)["Labels"]["io.kubernetes.pod.name"]
        kubectl("-n", rel.namespace, "delete", "pod", deleted, "--grace-period=3", "--wait=false")
        rel.wait(lambda s: s == {"featx-smoke/gpt2": "done", "featx-smoke/opt": "done",
                                 "featx-test/no-such-model": "failed"}, 600, "two models done, one failed")
    killed = terminated(rel.pods.find("featx-smoke_gpt2", 1))
    assert killed is not None and (killed["exitCode"], killed["reason"]) == (137, "Error")
    retry = rel.pods.find("featx-smoke_gpt2", 2)  # a failed attempt, not out of memory: same class
    assert retry is not None and retry["metadata"]["labels"]["featx.io/gpu-class"] == "cpu"
    # featx was stopped before the delete, so the deleted pod cannot have succeeded (the recorder may
    # last have seen it running: a deleted pod leaves the API soon after it ends), yet opt is
    # committed: a replacement did it, its Job's (a disruption) or the controller's attempt 2.
    # Its checksum is checked below.
    assert rel.pods.pods[deleted]["status"].get("phase") != "Succeeded"
    opt = [p for p in rel.pods.pods.values() if p["metadata"]["labels"]["featx.io/model"] == "featx-smoke_opt"]
    assert len(opt) >= 2 or re.search(r"\bretry model=featx-smoke/opt .*attempt=2", rel.controller_log())
    shapes = load_all(kubectl, f"s3://featx-features/{rel.prefix}", models[:2])
    assert {s[0] for s in shapes.values()} == {ROWS}

    # The missing model: one attempt, Failed by the podFailurePolicy, featx's line everywhere.
    jobs = [j for j in rel.jobs() if j["metadata"]["annotations"]["featx.io/model-id"] == models[2]]
    assert len(jobs) == 1
    (failed,) = [c for c in jobs[0]["status"]["conditions"] if c["type"] == "Failed"]
    assert failed["reason"] == "PodFailurePolicy"
    message = terminated(rel.pods.find("featx-test_no-such-model", 1))["message"]
    assert "featx-test/no-such-model" in message and "exit code" not in message, message
    (row,) = [r for r in rel.status() if r["id"] == models[2]]
    assert row["reason"] and row["attempts"] == 1
    give_up = [line for line in rel.controller_log().splitlines() if "give-up" in line]
    assert give_up and "featx-test/no-such-model" in give_up[0] and "cannot succeed on retry" in give_up[0]
    assert message.strip().splitlines()[-1][:60] in give_up[0], (message, give_up)
    with CAPTURED.open("a") as f:
        f.write(f"# a missing model: termination message\n{message}\n# kubectl -n featx logs deploy/featx\n{give_up[0]}\n")
    events = rel.job_events(jobs[0]["metadata"]["name"])
    assert [e[:2] for e in events] == [("Created", "Normal"), ("GaveUp", "Warning")], events
    assert "featx-test/no-such-model" in events[1][2] and "attempt 1" in events[1][2], events

    # /metrics from the controller's pod agrees with `featx status` (after the pass that saw it)
    want = {"done": 2, "failed": 1}

    def models_by_state() -> dict[str, float] | None:
        got = {dict(k)["state"]: v for k, v in rel.metrics().get("featx_models", {}).items() if v}
        return got if got == want else None
    wait_until(models_by_state, 60, f"featx_models = {want}", interval=3)
    assert {r["state"] for r in rel.status()} == {"done", "failed"}
    given_up = rel.metrics()["featx_models_given_up_total"]
    assert sum(given_up.values()) == 1 and dict(next(iter(given_up)))["reason"] == "permanent", given_up
