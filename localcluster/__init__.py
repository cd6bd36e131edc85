"""Local Kubernetes clusters for development: the test suite, the benchmarks and `make local-cluster`.

A real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok for
fake GPU nodes, started with kwokctl from binaries built by ``scripts/build-control-plane.sh``),
a :class:`PodRunner` that runs pods' commands locally on fake nodes (``controlplane``), and a real
node with containerd, runc and kubelet that runs featx's images (``node``, ``local``), and Kueue as a
host process against either (``kueue``).
Not part of the installed featx package. The pytest fixtures are in :mod:`tests.cluster.fixtures`.
"""

from localcluster.controlplane import (
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
