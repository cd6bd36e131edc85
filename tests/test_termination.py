"""featx's one line reaches Kubernetes' termination message (featx/cli/termination.py); the
real-node tier checks the same through a kubelet (tests/e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli


@pytest.fixture
def termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "termination-log"
    path.write_text("")  # the kubelet mounts an empty file
    monkeypatch.setenv("FEATX_TERMINATION_LOG", str(path))
    return path


def test_a_failed_model_writes_its_reason(termination_log: Path, tmp_path: Path):
    r = run_cli("extract", "--models", "featx-test/no-such-model", "--dataset", "featx-sample",
                "--output_dir", str(tmp_path / "out"))
    assert r.code == 3
    message = termination_log.read_text()
    assert message.startswith("featx-test/no-such-model ") and "\n" not in message.strip()


def test_bad_input_writes_the_error_line(termination_log: Path, tmp_path: Path):
    r = run_cli("extract", "--models", "featx-smoke/gpt2", "--num_samples", "0", "--output_dir", str(tmp_path))
    assert r.code == 2
    assert termination_log.read_text() == r.err.strip()


def test_outside_a_pod_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    absent = tmp_path / "no-such-file"
    monkeypatch.setenv("FEATX_TERMINATION_LOG", str(absent))
    r = run_cli("extract", "--models", "featx-smoke/gpt2", "--num_samples", "0", "--output_dir", str(tmp_path))
    assert r.code == 2 and not absent.exists()
