"""Shared test setup: hermetic featx home, offline hub, small helpers; service fixtures
(SeaweedFS, the Kubernetes control plane) come from their own modules."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="featx-test-home-")
os.environ.setdefault("FEATX_HOME", _HOME)
os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: fail fast instead of retrying for a minute
os.environ.setdefault("FEATX_NUM_WORKERS", "2")
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402

from tests.helpers import run_cli  # noqa: E402,F401

try:
    from tests.fixtures.seaweedfs import seaweedfs  # noqa: E402,F401
except ModuleNotFoundError:  # pragma: no cover - only while the S3 tier is being added
    pass
try:
    from tests.cluster.fixtures import k8s_cluster  # noqa: E402,F401
except ModuleNotFoundError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary, exported as FEATX_HELM so ``featx render`` (in-process or not) uses it."""
    from tests.helpers import find_helm

    path = find_helm()
    os.environ["FEATX_HELM"] = path
    return path


@pytest.fixture(scope="session")
def sample_rows():
    from featx.data import load_rows

    return load_rows("featx-sample")
