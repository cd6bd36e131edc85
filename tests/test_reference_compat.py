"""The reference's entry points: extract_features.py flags and the exhaustive driver script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import REPO


def test_extract_features_py_accepts_the_reference_flags(tmp_path):
    cmd = [sys.executable, str(REPO / "extract_features.py"), "--dataset", "featx-sample", "--subset", "default",
           "--modality", "language", "--pool", "avg", "--batch_size", "4",
           "--num_samples", "3", "--caption_idx", "0", "--output_dir", str(tmp_path), "--force_download",
           "--force_remake"]
    p = subprocess.run(cmd + ["--modelset", str(REPO / "tests/data/two-models.yaml")], capture_output=True, text=True,
                       env={**os.environ}, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    files = sorted(f.name for f in (tmp_path / "featx-sample/default").glob("*.pt"))
    assert files == ["featx-smoke_gpt2_pool-avg.pt", "featx-smoke_llama_pool-avg.pt"]
    assert torch.load(tmp_path / "featx-sample/default" / files[0], weights_only=True)["feats"].shape[0] == 3


def test_extract_features_py_refuses_prompt(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "extract_features.py"), "--prompt"], capture_output=True, text=True)
    assert p.returncode == 2 and "--prompt is not supported" in p.stderr


def test_exhaustive_driver_runs_language_avg_then_vision_with_each_models_default_pool(tmp_path):
    log = tmp_path / "calls"
    fake = tmp_path / "featx"
    fake.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    p = subprocess.run(["bash", str(REPO / "scripts/run_exhaustive_extraction.sh"), "prh", "wit_1024", "32", "100", "out"],
                       env={**os.environ, "FEATX": str(fake)}, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    calls = Path(log).read_text().splitlines()
    assert len(calls) == 2
    for call, modality in zip(calls, ["language", "vision"]):
        assert call.startswith("extract --modelset exhaustive --dataset prh --subset wit_1024 --batch_size 32")
        assert f"--modality {modality}" in call and "--num_samples 100" in call
    assert "--pool avg" in calls[0] and "--pool" not in calls[1]  # vision: cls where a model has a class token
