"""The end-to-end tier: featx's own images on a real node (containerd, runc, kubelet) beside the
suite's control plane, deployed by scripts/local-deploy.sh exactly as `make local-kind` does.

Needs root and a running Docker engine (`.ci/run` and `make test` start it with
scripts/ensure-dockerd.sh). A cold machine builds the images (about 8 min) and imports them into
the node (about 2 min); a warm one reuses both. ``FEATX_SKIP_E2E=1`` skips the tier; any other
failure to start is an error, never a skip.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import wait_until
from localcluster.local import LocalCluster, build_images, up
from tests.helpers import REPO

NS = "featx"  # what scripts/local-deploy.sh installs into
STORE = "s3://featx-features/features"
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if os.environ.get("FEATX_SKIP_E2E") == "1":
        pytest.skip("FEATX_SKIP_E2E=1: the real-node tier is disabled")
    if os.geteuid() != 0:
        raise PermissionError("the real-node tier needs root (containerd, kubelet); FEATX_SKIP_E2E=1 skips it")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise RuntimeError("the Docker engine does not answer: bash scripts/ensure-dockerd.sh (make test does)")
    started = time.monotonic()
    build_images()
    built = time.monotonic()
    local = up(tmp_path_factory.mktemp("local-cluster"))
    print(f"\n[e2e] images {built - started:.0f} s, cluster + node {time.monotonic() - built:.0f} s")
    try:
        yield local
    finally:
        local.stop()


@dataclass
class Kubectl:
    """kubectl and helm against the local cluster, with the environment scripts get."""

    local: LocalCluster

    @functools.cached_property
    def env(self) -> dict[str, str]:
        return self.local.tool_env()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
        p = subprocess.run(["kubectl", *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                           input=stdin)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p.stdout if check else p.stdout + p.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def helm(self, *args: str) -> str:
        p = subprocess.run(["helm", *args], capture_output=True, text=True, env=self.env, timeout=600, cwd=REPO)
        assert p.returncode == 0, f"helm {' '.join(args)}: {p.stderr}"
        return p.stdout


@pytest.fixture(scope="session")
def kubectl(local_cluster: LocalCluster) -> Kubectl:
    return Kubectl(local_cluster)


class PodRecorder:
    """Every extraction pod of a namespace as last seen, and ``kubectl logs`` of each that ended,
    taken by polling while a run goes on: the controller deletes a model's Jobs (and pods) once it
    is committed or retried, so afterwards there is nothing left to look at."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl, self.namespace = kubectl, namespace
        self.pods: dict[str, dict[str, Any]] = {}
        self.logs: dict[str, str] = {}  # pod name -> its log once it ended
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def poll(self) -> None:
        """Record the pods as they are now (also after the run: a pod may end after its model is done)."""
        try:
            items = self.kubectl.json("-n", self.namespace, "get", "pods", "-l", "featx.io/model")["items"]
        except (AssertionError, subprocess.SubprocessError, ValueError):
            return
        for pod in items:
            name = pod["metadata"]["name"]
            self.pods[name] = pod
            if pod["status"].get("phase") in ("Succeeded", "Failed") and name not in self.logs:
                self.logs[name] = self.kubectl("-n", self.namespace, "logs", name, check=False)

    def find(self, model_label: str, attempt: int) -> dict[str, Any] | None:
        """The (last seen) pod of one attempt at one model."""
        found = [p for p in self.pods.values() if p["metadata"]["labels"].get("featx.io/model") == model_label
                 and p["metadata"]["labels"].get("featx.io/attempt") == str(attempt)]
        return found[-1] if found else None


@dataclass
class Deployed:
    """What scripts/local-deploy.sh did, and the extraction pods seen while it ran."""

    proc: subprocess.CompletedProcess[str]
    pods: PodRecorder


@pytest.fixture(scope="session")
def deployed(local_cluster: LocalCluster, kubectl: Kubectl) -> Deployed:
    """scripts/local-deploy.sh, as `make local-kind` and `make local-cluster` run it, with the real
    node's GPU class so that the chart's GPU-sized Jobs schedule on it."""
    started = time.monotonic()
    with PodRecorder(kubectl, NS) as pods:
        p = subprocess.run(
            ["bash", str(REPO / "scripts" / "local-deploy.sh")], capture_output=True, text=True, cwd=REPO,
            timeout=1800, env=kubectl.env | {"FEATX_VALUES": str(HERE / "real-node-values.yaml"),
                                             "FEATX_POLL_S": "5", "FEATX_WAIT_S": "1200"},
        )
    print(f"\n[e2e] local-deploy.sh: exit {p.returncode} in {time.monotonic() - started:.0f} s")
    return Deployed(p, pods)


def s3_env(kubectl: Kubectl) -> dict[str, str]:
    """AWS settings that reach the in-cluster SeaweedFS from this host (its pod's address)."""
    secret = kubectl.json("-n", NS, "get", "secret", "featx-s3")["data"]
    service = kubectl.json("-n", NS, "get", "service", "seaweedfs")  # the Service range is routed here
    return {
        "AWS_ENDPOINT_URL": f"http://{service['spec']['clusterIP']}:8333",
        "AWS_ACCESS_KEY_ID": base64.b64decode(secret["AWS_ACCESS_KEY_ID"]).decode(),
        "AWS_SECRET_ACCESS_KEY": base64.b64decode(secret["AWS_SECRET_ACCESS_KEY"]).decode(),
        "AWS_REGION": "us-east-1",
    }


@dataclass
class Release:
    """A second install of the chart in its own restricted namespace (own store prefix), for faults;
    ``with release.pods:`` records its extraction pods while a test runs."""

    kubectl: Kubectl
    namespace: str
    prefix: str
    models: list[str]
    pods: PodRecorder

    def status(self) -> list[dict[str, Any]]:
        out = self.kubectl("-n", self.namespace, "exec", "deploy/featx", "--", "featx", "status",
                           "--store", f"s3://featx-features/{self.prefix}", "--models", *self.models,
                           "--dataset", "featx-sample", "--namespace", self.namespace, "--release", "featx", "--json")
        return json.loads(out)

    def states(self) -> dict[str, str]:
        return {r["id"]: r["state"] for r in self.status()}

    def wait(self, predicate, timeout: float, what: str) -> Any:
        def poll() -> Any:
            try:
                return predicate(self.states())
            except AssertionError:
                return None
        return wait_until(poll, timeout, what, interval=3)

    def jobs(self) -> list[dict[str, Any]]:
        return self.kubectl.json("-n", self.namespace, "get", "jobs")["items"]

    def controller_log(self) -> str:
        return self.kubectl("-n", self.namespace, "logs", "deploy/featx", check=False)

    def job_events(self, job: str) -> list[tuple[str, str, str]]:
        """(reason, type, message) of featx's Events on Job ``job``, oldest first, as
        `kubectl get events --field-selector involvedObject.name=JOB` shows them."""
        from featx.kube.events import REPORTING_CONTROLLER

        items = self.kubectl.json("-n", self.namespace, "get", "events",
                                  "--field-selector", f"involvedObject.name={job}")["items"]
        ours = [e for e in items if e.get("reportingComponent") == REPORTING_CONTROLLER]
        ours.sort(key=lambda e: e.get("eventTime") or e.get("firstTimestamp") or "")
        return [(e["reason"], e["type"], e.get("message") or e.get("note", "")) for e in ours]

    def metrics(self, port: int = 8080) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """The controller's Prometheus /metrics, fetched inside its pod (the chart's health port),
        parsed by prometheus-client: sample name -> {labels: value}."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.kubectl("-n", self.namespace, "exec", "deploy/featx", "--", "python", "-c",
                            "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                            f"'http://127.0.0.1:{port}/metrics', timeout=10).read().decode())")
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return out


def install_release(kubectl: Kubectl, name: str, models: list[str], values: dict[str, Any], tmp: Path) -> Release:
    """Namespace as k8s/namespace.yaml (restricted), the store's Secret, `helm install` of the chart."""
    ns_doc = yaml.safe_load((REPO / "k8s" / "namespace.yaml").read_text())
    ns_doc["metadata"]["name"] = name
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(ns_doc))
    secret = kubectl.json("-n", NS, "get", "secret", "featx-s3")
    secret["metadata"] = {"name": "featx-s3", "namespace": name}
    kubectl("apply", "-f", "-", stdin=json.dumps(secret))
    prefix = name
    full = {"modelset": models, "s3": {"prefix": prefix}, "controller": {"intervalSeconds": 3}, **values}
    path = tmp / f"{name}-values.yaml"
    path.write_text(yaml.safe_dump(full))
    kubectl.helm("upgrade", "--install", "featx", "./helm/featx", "-n", name, "-f", "k8s/local-values.yaml",
                 "-f", str(path), "--wait", "--timeout", "5m")
    return Release(kubectl, name, prefix, models, PodRecorder(kubectl, name))
