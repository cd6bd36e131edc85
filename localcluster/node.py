"""A real node beside the test control plane: containerd + runc + kubelet run featx's own images.

Why a real node: everything a container decides (the image's user, a read-only root, memory
limits and the kernel's OOM killer, logs through the kubelet, Pod Security admission of real pod
specs) cannot be seen with kwok's fake nodes. The pieces, all built from Go modules by
``scripts/build-control-plane.sh``, run as host processes (this needs root):

* a bridge ``featx0`` with the pod subnet; the API server binds its gateway address, so pods reach
  it through the ``kubernetes`` Service, and its serving certificate names that address;
* containerd 2.x (its own socket, state and root: the Docker engine's containerd is left alone;
  the root, which holds image layers, is kept between runs so a warm machine imports nothing);
* kubelet (cgroupfs, cgroup v1 allowed, anonymous + AlwaysAllow so ``kubectl logs`` works);
* kube-proxy (iptables) for Services, and CoreDNS (``kubernetes`` plugin only) for their names.

Traffic stays on this machine: the bridge does no NAT, forwarding off the bridge is rejected, and
the Service range is routed into the bridge, never out of the default route.

The node advertises ``nvidia.com/gpu`` and GPU Feature Discovery labels of one GPU class (patched
through the API, as for any extended resource without a device plugin) so that the chart's
GPU-sized Jobs schedule on it; they run the CPU image.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client

from featx.processes import alive
from localcluster.controlplane import Cluster, _reap, wait_until

log = logging.getLogger(__name__)

CACHE = Path(os.environ.get("FEATX_HOME_CACHE", Path.home() / ".cache" / "featx"))
CONTAINERD_ROOT = CACHE / "containerd"  # image layers, kept between runs
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
PAUSE_IMAGE = "featx.local/pause:1"
FORWARD_CHAIN = "FEATX-NODE-FORWARD"
INPUT_CHAIN = "FEATX-NODE-INPUT"


@dataclass(frozen=True)
class NodeNetwork:
    """Addresses of the test node: a pod subnet on a bridge, and the Service range."""

    bridge: str = "featx0"
    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/24"

    @property
    def gateway(self) -> str:
        """The bridge's address: the API server, kubelet and cluster DNS listen here."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP (first address of the range): in the API server's
        certificate, since in-cluster clients connect to it by address."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    def apiserver_args(self) -> dict[str, str]:
        return {
            "advertise-address": self.gateway,
            "service-cluster-ip-range": self.service_cidr,
            "kubelet-preferred-address-types": "InternalIP",
        }


@dataclass(frozen=True)
class NodeGpu:
    """The GPU class the real node pretends to have (labels as GPU Feature Discovery sets them)."""

    count: int = 8
    memory_mib: int = 143771
    product: str = "NVIDIA-H200"


def _run(*argv: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout, **kw)


def setup_network(net: NodeNetwork) -> None:
    """Bridge with the gateway address, forwarding confined to the bridge, Service range local.

    Must run before the API server starts: its certificate names the gateway address."""
    if _run("ip", "link", "show", net.bridge, check=False).returncode != 0:
        _run("ip", "link", "add", net.bridge, "type", "bridge")
    prefix = ipaddress.ip_network(net.pod_cidr).prefixlen
    _run("ip", "addr", "replace", f"{net.gateway}/{prefix}", "dev", net.bridge)
    _run("ip", "link", "set", net.bridge, "up")
    _run("ip", "route", "replace", net.service_cidr, "dev", net.bridge)
    for path, value in (("/proc/sys/net/ipv4/ip_forward", "1"), ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")):
        try:
            Path(path).write_text(value)
        except OSError:
            if not Path(path).exists():
                _run("modprobe", "br_netfilter", check=False)
    # The Docker engine sets FORWARD's policy to DROP; accept pod-to-pod traffic on the bridge and
    # reject everything else a pod would send off this machine.
    _run("iptables", "-w", "-N", FORWARD_CHAIN, check=False)
    _run("iptables", "-w", "-F", FORWARD_CHAIN)
    _run("iptables", "-w", "-A", FORWARD_CHAIN, "-i", net.bridge, "-o", net.bridge, "-j", "ACCEPT")
    _run("iptables", "-w", "-A", FORWARD_CHAIN, "-i", net.bridge, "-j", "REJECT")
    _run("iptables", "-w", "-A", FORWARD_CHAIN, "-o", net.bridge, "-j", "REJECT")
    if _run("iptables", "-w", "-C", "FORWARD", "-j", FORWARD_CHAIN, check=False).returncode != 0:
        _run("iptables", "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)


def admit_only_local(net: NodeNetwork, port: int) -> None:
    """The API server listens on every address (pods reach it through the bridge's): accept its
    port from loopback and the pod bridge only, never from another interface."""
    _run("iptables", "-w", "-N", INPUT_CHAIN, check=False)
    _run("iptables", "-w", "-F", INPUT_CHAIN)
    for iface in ("lo", net.bridge):
        _run("iptables", "-w", "-A", INPUT_CHAIN, "-p", "tcp", "--dport", str(port), "-i", iface, "-j", "ACCEPT")
    _run("iptables", "-w", "-A", INPUT_CHAIN, "-p", "tcp", "--dport", str(port), "-j", "DROP")
    if _run("iptables", "-w", "-C", "INPUT", "-j", INPUT_CHAIN, check=False).returncode != 0:
        _run("iptables", "-w", "-I", "INPUT", "1", "-j", INPUT_CHAIN)


def teardown_network(net: NodeNetwork) -> None:
    for parent, chain in (("FORWARD", FORWARD_CHAIN), ("INPUT", INPUT_CHAIN)):
        _run("iptables", "-w", "-D", parent, "-j", chain, check=False)
        _run("iptables", "-w", "-F", chain, check=False)
        _run("iptables", "-w", "-X", chain, check=False)
    _run("ip", "route", "del", net.service_cidr, check=False)
    _run("ip", "link", "del", net.bridge, check=False)


@dataclass
class RealNode:
    """containerd, kubelet, kube-proxy and CoreDNS of one node; ``stop()`` removes all of it."""

    name: str
    cluster: Cluster
    net: NodeNetwork
    workdir: Path
    bin_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopped: bool = False

    @property
    def state_dir(self) -> Path:
        # A unix socket path must be short (108 bytes): keep it out of pytest's deep tmp dirs.
        return Path("/run/featx-node") / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.state_dir / "containerd.sock"

    def ctr(self, *args: str, timeout: float = 600, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.bin_dir / "ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io", *args],
            input=stdin, capture_output=True, check=True, timeout=timeout,
        )

    def log(self, component: str) -> str:
        path = self.workdir / "logs" / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start(self, component: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{component}.log", "ab") as out:
            self.procs[component] = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **(env or {})},
            )

    def _check_alive(self) -> None:
        for component, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{component} exited with {proc.returncode}:\n{self.log(component)[-3000:]}")

    # -- pieces ---------------------------------------------------------------------------------

    def start_containerd(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-featx.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "featx",
            "plugins": [
                {"type": "bridge", "bridge": self.net.bridge, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.workdir / "ipam"),
                          "ranges": [[{"subnet": self.net.pod_cidr, "gateway": self.net.gateway}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }))
        cri = 'plugins."io.containerd.cri.v1'
        config = f"""version = 3
root = "{CONTAINERD_ROOT}"
state = "{self.state_dir}/state"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[{cri}.images"]
  snapshotter = "overlayfs"

[{cri}.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[{cri}.runtime"]
  # This machine withholds CAP_SYS_RESOURCE: without this runc cannot write oom_score_adj and
  # every sandbox fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true

[{cri}.runtime".cni]
  bin_dirs = {json.dumps([d for d in CNI_BIN_DIRS if Path(d).is_dir()])}
  conf_dir = "{cni_conf}"

[{cri}.runtime".containerd]
  default_runtime_name = "runc"

[{cri}.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.runtime".containerd.runtimes.runc.options]
  BinaryName = "{self.bin_dir / 'runc'}"
  SystemdCgroup = false
"""
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        env = {"PATH": f"{self.bin_dir}:{os.environ.get('PATH', os.defpath)}"}  # the runc shim
        self._start("containerd", [str(self.bin_dir / "containerd"), "--config", str(path)], env)
        wait_until(lambda: self._check_alive() or self.containerd_socket.exists(), 60, "containerd's socket")
        wait_until(lambda: self._ctr_ok(), 60, "containerd to answer")

    def _ctr_ok(self) -> bool:
        self._check_alive()
        try:
            self.ctr("version", timeout=10)
            return True
        except subprocess.CalledProcessError:
            return False

    def load_images(self, images: Iterable[str]) -> None:
        """``docker save | ctr import`` each image the node lacks (by Docker image id)."""
        stamps = CONTAINERD_ROOT / "featx-imported"
        stamps.mkdir(exist_ok=True)
        for image in images:
            image_id = _run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
            stamp = stamps / image.replace("/", "_").replace(":", "_")
            listed = self.ctr("images", "ls", "-q").stdout.decode().split()
            # "featx-cpu:dev" is listed as docker.io/library/featx-cpu:dev, "featx.local/pause:1" as is
            present = any(ref == image or ref.endswith("/" + image) for ref in listed)
            if present and stamp.exists() and stamp.read_text() == image_id:
                continue
            start = time.monotonic()
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            assert save.stdout is not None
            subprocess.run(
                [str(self.bin_dir / "ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io",
                 "images", "import", "--label", "io.cri-containerd.pinned=pinned", "-"],
                stdin=save.stdout, check=True, capture_output=True, timeout=1200,
            )
            if save.wait() != 0:
                raise RuntimeError(f"docker save {image} failed")
            stamp.write_text(image_id)
            log.info("imported %s into the node in %.0f s", image, time.monotonic() - start)

    def start_kubelet(self, gpu: NodeGpu, labels: Mapping[str, str]) -> None:
        root = self.workdir / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "resolv.conf").write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.net.gateway,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [self.net.gateway],
            "clusterDomain": "cluster.local",
            "resolvConf": str(self.workdir / "resolv.conf"),
            "podCIDR": self.net.pod_cidr,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "failSwapOn": False,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "maxPods": 30,
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "shutdownGracePeriod": "0s",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(json.dumps(config))
        self._start("kubelet", [
            str(self.bin_dir / "kubelet"), "--config", str(path), "--kubeconfig", str(self.cluster.kubeconfig),
            "--hostname-override", self.name, "--node-ip", self.net.gateway, "--root-dir", str(root),
            "--cert-dir", str(self.workdir / "kubelet-pki"),
            "--node-labels", ",".join(f"{k}={v}" for k, v in labels.items()),
        ])
        api = self.cluster.api_client()
        core = client.CoreV1Api(api)

        def ready() -> bool:
            self._check_alive()
            try:
                node = core.read_node(self.name)
            except client.ApiException:
                return False
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        wait_until(ready, 120, f"node {self.name} Ready", 0.5)
        gpus = str(gpu.count)
        core.patch_node_status(self.name, {"status": {"capacity": {"nvidia.com/gpu": gpus},
                                                      "allocatable": {"nvidia.com/gpu": gpus}}})
        core.patch_node(self.name, {"metadata": {"labels": {
            "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": gpu.product,
            "nvidia.com/gpu.memory": str(gpu.memory_mib), "nvidia.com/gpu.count": gpus,
        }}})
        api.close()

    def start_proxy_and_dns(self) -> None:
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cluster.kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": self.net.gateway,
            "clusterCIDR": self.net.pod_cidr,
            "mode": "iptables",
            "conntrack": {"maxPerCore": 0},
            "healthzBindAddress": "",
            "metricsBindAddress": "",
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(json.dumps(proxy))
        self._start("kube-proxy", [str(self.bin_dir / "kube-proxy"), "--config", str(path)])
        corefile = self.workdir / "Corefile"
        corefile.write_text(
            f".:53 {{\n    bind {self.net.gateway}\n    errors\n"
            f"    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n"
            f"        kubeconfig {self.cluster.kubeconfig}\n        pods insecure\n    }}\n}}\n"
        )
        self._start("coredns", [str(self.bin_dir / "coredns"), "-conf", str(corefile)])
        time.sleep(1)
        self._check_alive()

    # -- teardown -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop kubelet, every container of this node, containerd, kube-proxy and CoreDNS."""
        if self._stopped:
            return
        self._stopped = True
        self.stop_pids({component: proc.pid for component, proc in self.procs.items()})

    def stop_pids(self, pids: Mapping[str, int]) -> None:
        """The teardown of ``stop()`` from the components' pids (also from another process)."""
        for component in ("kubelet", "coredns"):
            if component in pids:
                _reap([pids[component]], grace=5)
        if "containerd" in pids and alive(pids["containerd"]):
            self._remove_containers()
        for component in ("kube-proxy", "containerd"):
            if component in pids:
                _reap([pids[component]], grace=10)
        _kill_shims(self.containerd_socket)
        if "kube-proxy" in pids:
            _run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        _unmount_under(self.workdir)
        _unmount_under(self.state_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _remove_containers(self) -> None:
        def each(verb: list[str], ids: list[str]) -> None:
            for i in ids:
                subprocess.run([str(self.bin_dir / "ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io",
                                *verb, i], capture_output=True, timeout=30)

        try:
            tasks = self.ctr("tasks", "ls", "-q", timeout=30).stdout.decode().split()
            each(["tasks", "kill", "-s", "SIGKILL"], tasks)
            time.sleep(1)
            each(["tasks", "rm", "-f"], tasks)
            each(["containers", "rm"], self.ctr("containers", "ls", "-q", timeout=30).stdout.decode().split())
        except (subprocess.SubprocessError, OSError) as exc:
            log.warning("cleaning containers of %s: %s", self.name, exc)


def _kill_shims(socket: Path) -> None:
    """runc shims outlive containerd; find those started for ``socket`` and kill them."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in b" ".join(cmdline):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _unmount_under(path: Path) -> None:
    prefix = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        _run("umount", "-l", mount, check=False)


def start_node(
    cluster: Cluster,
    net: NodeNetwork,
    workdir: Path,
    *,
    bin_dir: Path,
    images: Sequence[str],
    name: str = "featx-node",
    gpu: NodeGpu = NodeGpu(),
    labels: Mapping[str, str] | None = None,
) -> RealNode:
    """Start a real node in ``cluster`` (whose API server binds ``net.gateway``) and load ``images``.

    ``setup_network(net)`` must have run before the cluster started. On failure everything that
    started is stopped and the error carries the failing component's log."""
    if os.geteuid() != 0:
        raise PermissionError("a real node needs root (containerd, kubelet, iptables)")
    node = RealNode(name=name, cluster=cluster, net=net, workdir=Path(workdir), bin_dir=bin_dir)
    node.workdir.mkdir(parents=True, exist_ok=True)
    atexit.register(node.stop)
    try:
        node.start_containerd()
        node.load_images([PAUSE_IMAGE, *images])
        node.start_kubelet(gpu, {"featx.io/real-node": "true", **(labels or {})})
        node.start_proxy_and_dns()
    except BaseException:
        logs = "\n".join(f"--- {c} ---\n{node.log(c)[-2000:]}" for c in ("containerd", "kubelet", "kube-proxy", "coredns"))
        node.stop()
        raise RuntimeError(f"the real node did not start:\n{logs}") from None
    return node
