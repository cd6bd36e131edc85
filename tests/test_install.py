"""The README's set-up command fails loudly: a failed tool build fails ``make install`` (no status
lost to a pipe, no link to a path that does not exist), a missing Debian package names the
``sudo apt-get install`` to run, and the installed ``.venv/bin/featx`` finds the helm beside it
without an activated venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featx.catalog import load_modelset

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_tool_build_fails_make_install_and_links_nothing(tmp_path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    # no Go on PATH: build-control-plane.sh stops at its first check, as any failed build step does
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "FEATX_TOOLS_DIR": str(tmp_path / "tools")}
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "control-plane", f"VENV={tmp_path / 'venv'}"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "go is required" in r.stderr
    assert not (venv_bin / "helm").exists() and not (venv_bin / "helm").is_symlink()


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs util-linux setpriv to drop root")
def test_a_missing_package_as_non_root_names_the_sudo_command():
    import tempfile

    fake = Path(tempfile.mkdtemp(prefix="featx-fake-dpkg-"))  # readable by the unprivileged user
    fake.chmod(0o755)
    query = fake / "dpkg-query"  # every package reads as absent
    query.write_text("#!/bin/sh\nexit 1\n")
    query.chmod(0o755)
    cmd = ["bash", str(ROOT / "scripts" / "install-system-deps.sh")]
    if os.getuid() == 0:
        cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": f"{fake}:/usr/bin:/bin"}, timeout=60)
    finally:
        shutil.rmtree(fake)
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()
    assert "sudo apt-get install docker.io" in line and "libseccomp-dev" in line


def test_the_venvs_featx_renders_without_an_activated_venv():
    featx = Path(sys.executable).parent / "featx"
    if not (Path(sys.executable).parent / "helm").exists():
        pytest.skip("make install links helm into the venv; this venv has none")
    env = {k: v for k, v in os.environ.items() if k != "FEATX_HELM"}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run([str(featx), "render", "--modelset", "smoke", "--set", "dataset=featx-sample"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("kind: Job") == len(load_modelset("smoke").models)
