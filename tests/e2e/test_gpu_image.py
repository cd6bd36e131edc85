"""The GPU image (`make image`: featx:dev, docker/Dockerfile's cuda flavour) built on this machine
without a registry and checked for everything that needs no GPU: torch's CUDA build inside, the
same user, entrypoint and caches as the CPU image, the catalog check, a real extraction on the CPU
equal to the host's, and a one-line error for ``--device cuda`` where the container sees no GPU.

Needs root and a running Docker engine, like the rest of the tier; a warm machine reuses the image
(scripts/build-images.sh skips it when nothing that goes into it changed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

import featx
from tests.helpers import REPO, run_cli
from tests import test_disk_full as disk_full
from tests.test_disk_full import MODELS, STEPS, check_disk_full

pytestmark = pytest.mark.e2e
IMAGE = "featx:dev"
LOCK = REPO / "docker" / "requirements.lock"
HARDENED = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "-e", "HF_HUB_OFFLINE=1")  # as the chart runs it: read-only root, no capabilities
CACHE = ("--tmpfs", "/cache:uid=10001,gid=10001")  # the chart mounts a volume at /cache
small_disk, sizes = disk_full.small_disk, disk_full.sizes  # its fixtures, for the disk-full cases


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("FEATX_SKIP_E2E") == "1":
        pytest.skip("FEATX_SKIP_E2E=1: the real-node tier is disabled")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise RuntimeError("the Docker engine does not answer: bash scripts/ensure-dockerd.sh (make test does)")
    p = subprocess.run(["make", "-s", "image"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == IMAGE
    return IMAGE


def docker_run(image: str, *args: str, mounts: tuple[str, ...] = (), entrypoint: str | None = None,
               ) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", *HARDENED, *mounts, *(["--entrypoint", entrypoint] if entrypoint else []), image, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_image_has_torch_with_the_locked_cuda_runtime(image: str):
    runtime = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", LOCK.read_text(), re.M)
    assert runtime, "docker/requirements.lock pins nvidia-cuda-runtime"
    p = docker_run(image, "-c", "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))",
                   entrypoint="python")
    assert p.returncode == 0, p.stderr
    version, cuda = json.loads(p.stdout)
    assert version.startswith("2.14.1") and cuda == f"{runtime[1]}.{runtime[2]}", (version, cuda)


def test_image_runs_as_the_cpu_image_does(image: str):
    cfg = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                                    check=True).stdout)[0]["Config"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"] == ["featx"]
    assert env["HF_HOME"] == "/cache/huggingface" and env["FEATX_HOME"] == "/cache/featx"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert "(cuda image)" in cfg["Labels"]["org.opencontainers.image.description"]
    p = docker_run(image, "models", "--check", "--modelset", "smoke")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) >= 30 and all(ln.startswith("ok ") for ln in lines), p.stdout


def test_extraction_on_the_cpu_equals_the_hosts(image: str, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 10001, 10001)
    args = ("extract", "--models", "featx-smoke/gpt2", "--dataset", "featx-sample", "--num_samples", "6")
    p = docker_run(image, *args, "--device", "cpu", "--output_dir", "/work/out", mounts=(*CACHE, "-v", f"{out}:/work/out"))
    assert p.returncode == 0, p.stderr
    host = tmp_path / "host"
    r = run_cli(*args, "--device", "cpu", "--output_dir", str(host))
    assert r.code == 0, r.err
    mine = featx.load("featx-smoke/gpt2", str(out), dataset="featx-sample")
    ref = featx.load("featx-smoke/gpt2", str(host), dataset="featx-sample")
    assert mine.tensors.keys() == ref.tensors.keys() and mine.feats.shape == ref.feats.shape == (6, 3, 64)
    assert torch.allclose(mine.feats, ref.feats, atol=1e-5), (mine.feats - ref.feats).abs().max()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(image: str, tmp_path: Path):
    p = docker_run(image, "extract", "--models", "featx-smoke/gpt2", "--dataset", "featx-sample",
                   "--num_samples", "2", "--device", "cuda", "--output_dir", "/tmp/out", mounts=CACHE)
    assert p.returncode == 2, p.stdout + p.stderr
    errors = p.stderr.strip().splitlines()
    assert len(errors) == 1 and "sees no GPU" in errors[0] and "--device cpu" in errors[0], p.stderr


def test_unwritable_cache_is_one_line_and_exit_2(image: str):
    """No volume at /cache under a read-only root: the line says what to mount, no traceback."""
    p = docker_run(image, "extract", "--models", "featx-smoke/gpt2", "--dataset", "featx-sample",
                   "--num_samples", "2", "--device", "cpu", "--output_dir", "/tmp/out")
    errors = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(errors) == 1 and "FEATX_HOME=/cache/featx" in errors[0], p.stderr
    assert "mount a volume at /cache" in errors[0]


@pytest.mark.parametrize("step", [s for s, (_, tmp, _) in STEPS.items() if tmp is None])
def test_disk_full_in_the_image(image: str, step: str, small_disk, sizes):
    """The disk-full cases of tests/test_disk_full.py with featx in its image, as a Job runs it:
    a small tmpfs mounted as the output directory, written by the image's user."""
    out_free, _, flags = STEPS[step]
    out = small_disk("out", out_free(sizes))
    os.chown(out, 10001, 10001)
    p = docker_run(image, "extract", "--models", *MODELS, "--dataset", "featx-sample", *flags,
                   "--device", "cpu", "--output_dir", "/work/out", mounts=(*CACHE, "-v", f"{out}:/work/out"))
    check_disk_full(p.returncode, p.stderr, out, flags)
