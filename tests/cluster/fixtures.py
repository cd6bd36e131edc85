"""pytest fixtures for tests that need a real Kubernetes control plane.

Load with ``pytest_plugins = ["tests.cluster.fixtures"]`` in the top-level conftest.py (or import
the fixtures into a test module). The cluster starts once per session (about 3 s when the
binaries are cached; the first run on a machine builds them, ~10 min). ``FEATX_SKIP_K8S=1`` skips
the tests that use it; any other failure to start is an error, never a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from localcluster.controlplane import (
    DEFAULT_GPU_CLASSES,
    Cluster,
    PodRunner,
    add_gpu_nodes,
    create_namespace,
    start_cluster,
)


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's control plane (etcd, apiserver, controller-manager, scheduler, kwok)."""
    if os.environ.get("FEATX_SKIP_K8S") == "1":
        pytest.skip("FEATX_SKIP_K8S=1: Kubernetes control-plane tests disabled")
    cluster = start_cluster(tmp_path_factory.mktemp("k8s"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def k8s_api(k8s_cluster: Cluster) -> Iterator[client.ApiClient]:
    """An admin API client for the session's cluster."""
    api = k8s_cluster.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def gpu_nodes(k8s_api: client.ApiClient) -> list[str]:
    """The default fake GPU nodes (8x80GB, 4x40GB, 1x24GB, a MIG node), Ready."""
    return add_gpu_nodes(k8s_api, DEFAULT_GPU_CLASSES)


@pytest.fixture
def k8s_namespace(k8s_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test (with its default ServiceAccount), deleted afterwards."""
    name = create_namespace(k8s_api, f"t-{secrets.token_hex(4)}")
    try:
        yield name
    finally:
        client.CoreV1Api(k8s_api).delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def pod_runner_factory(
    k8s_api: client.ApiClient, tmp_path: Path
) -> Iterator[Callable[..., PodRunner]]:
    """``factory(namespace, **PodRunner kwargs)`` -> a started PodRunner, stopped after the test."""
    runners: list[PodRunner] = []

    def factory(namespace: str, **kwargs: Any) -> PodRunner:
        kwargs.setdefault("workdir", tmp_path / f"pods-{namespace}")
        runner = PodRunner(k8s_api, namespace, **kwargs).start()
        runners.append(runner)
        return runner

    try:
        yield factory
    finally:
        for runner in runners:
            runner.stop()


@pytest.fixture
def pod_runner(pod_runner_factory: Callable[..., PodRunner], k8s_namespace: str) -> PodRunner:
    """A PodRunner for ``k8s_namespace`` with default settings (host PATH and HOME only)."""
    return pod_runner_factory(k8s_namespace)
