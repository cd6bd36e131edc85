"""A local cluster with one real node: the end-to-end tier's cluster, and ``make local-cluster``.

``python -m localcluster.local up`` starts the suite's control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok for fake nodes) on the address of a pod bridge, and a real node
(containerd, runc, kubelet, kube-proxy, CoreDNS) that runs featx's images; it prints the
kubeconfig's path and leaves everything running. ``... down`` removes all of it. Needs root and a
running Docker engine (the images come from it); see localcluster/node.py for the pieces.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster.controlplane import REPO_ROOT, Cluster, _reap, find_bin_dir, find_kubectl, start_cluster
from localcluster.node import (
    CACHE, NodeNetwork, RealNode, admit_only_local, setup_network, start_node, teardown_network,
)

IMAGES = ("featx-cpu:dev", "chrislusf/seaweedfs:4.48")  # k8s/local-values.yaml, k8s/seaweedfs.yaml
STATE_DIR = CACHE / "local-cluster"


def build_images() -> None:
    """scripts/build-images.sh --node: a no-op when nothing that goes into an image changed."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-images.sh"), "--node"],
                   stdout=subprocess.DEVNULL, check=True, cwd=REPO_ROOT)


@dataclass
class LocalCluster:
    """The control plane, its real node and the network between them."""

    cluster: Cluster
    node: RealNode
    net: NodeNetwork

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def tool_env(self) -> dict[str, str]:
        """Environment for kubectl/helm/scripts against this cluster (kubectl and helm on PATH)."""
        tools = self.cluster.workdir / "tools"  # kubectl (start_cluster links it) and helm (up())
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{tools}:{Path(sys.executable).parent}:{os.environ.get('PATH', os.defpath)}"}

    def stop(self) -> None:
        self.node.stop()
        self.cluster.stop()
        teardown_network(self.net)


def up(workdir: Path, net: NodeNetwork = NodeNetwork()) -> LocalCluster:
    """Network, control plane on the bridge's address, then the node with featx's images."""
    if os.geteuid() != 0:
        raise PermissionError("a local cluster with a real node needs root")
    bin_dir = find_bin_dir()
    setup_network(net)
    cluster = start_cluster(
        workdir / "control-plane", bin_dir=bin_dir, kubectl=find_kubectl(), apiserver_bind_address="0.0.0.0",
        apiserver_args=net.apiserver_args(), cert_sans=[net.kubernetes_service_ip],
    )
    try:
        (cluster.workdir / "tools" / "helm").symlink_to(bin_dir / "helm")
        server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        admit_only_local(net, int(server.rsplit(":", 1)[1]))
        node = start_node(cluster, net, workdir / "node", bin_dir=bin_dir, images=IMAGES)
    except BaseException:
        cluster.stop()
        teardown_network(net)
        raise
    return LocalCluster(cluster, node, net)


def _save(local: LocalCluster, path: Path) -> None:
    c, n = local.cluster, local.node
    state = {
        "cluster": {"name": c.name, "workdir": str(c.workdir), "kwok_workdir": str(c.kwok_workdir),
                    "kubeconfig": str(c.kubeconfig), "bin_dir": str(c.bin_dir),
                    "kubectl_binary": str(c.kubectl_binary), "env": c._env},
        "node": {"name": n.name, "workdir": str(n.workdir), "pids": {k: p.pid for k, p in n.procs.items()}},
        "net": dataclasses.asdict(local.net),
    }
    path.write_text(json.dumps(state, indent=1))


def _down(path: Path) -> None:
    state = json.loads(path.read_text())
    c = state["cluster"]
    cluster = Cluster(name=c["name"], workdir=Path(c["workdir"]), kwok_workdir=Path(c["kwok_workdir"]),
                      kubeconfig=Path(c["kubeconfig"]), bin_dir=Path(c["bin_dir"]),
                      kubectl_binary=Path(c["kubectl_binary"]), _env=c["env"])
    net = NodeNetwork(**state["net"])
    node = RealNode(name=state["node"]["name"], cluster=cluster, net=net, workdir=Path(state["node"]["workdir"]),
                    bin_dir=cluster.bin_dir)
    pids = state["node"]["pids"]
    node.stop_pids(pids)
    _reap(pids.values(), grace=5)
    cluster.stop()
    teardown_network(net)
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.local", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--workdir", type=Path, default=STATE_DIR)
    args = parser.parse_args(argv)
    state = args.workdir / "state.json"
    if args.action == "down":
        if not state.exists():
            print(f"local-cluster: nothing to remove ({state} does not exist)", file=sys.stderr)
            return 0
        _down(state)
        shutil.rmtree(args.workdir, ignore_errors=True)
        return 0
    if state.exists():
        print(f"local-cluster: already up ({state}); `make local-cluster-down` first", file=sys.stderr)
        return 1
    args.workdir.mkdir(parents=True, exist_ok=True)
    build_images()
    local = up(args.workdir)
    _save(local, state)
    atexit.unregister(local.node.stop)  # leave it running: `down` removes it
    atexit.unregister(local.cluster.stop)
    print(local.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
