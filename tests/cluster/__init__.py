"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), started with kwokctl from binaries built by
``scripts/build-control-plane.sh``; plus a :class:`PodRunner` that runs pods' commands locally,
since there is no container runtime here.

Use the pytest fixtures in :mod:`tests.cluster.fixtures`.
"""

from tests.cluster.controlplane import (
    DEFAULT_GPU_CLASSES,
    GPU_1X24GB,
    GPU_4X40GB,
    GPU_8X80GB,
    GPU_MIG_3G40GB,
    Cluster,
    GpuNodeClass,
    PodResult,
    PodRunner,
    add_gpu_nodes,
    create_namespace,
    find_bin_dir,
    start_cluster,
    wait_until,
)

__all__ = [
    "DEFAULT_GPU_CLASSES",
    "GPU_1X24GB",
    "GPU_4X40GB",
    "GPU_8X80GB",
    "GPU_MIG_3G40GB",
    "Cluster",
    "GpuNodeClass",
    "PodResult",
    "PodRunner",
    "add_gpu_nodes",
    "create_namespace",
    "find_bin_dir",
    "start_cluster",
    "wait_until",
]
