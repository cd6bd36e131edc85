"""The layering as import contracts (``[tool.importlinter]`` in pyproject.toml), run by
``lint-imports`` here so that ``make test`` and CI check it: catalog, data and plan import no
torch, storage or cluster code; store knows neither catalog nor extract; extract knows no
orchestration, cluster or CLI; align never extracts; the cluster layer never extracts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "lint-imports not found: run `make install` (import-linter is pinned in requirements.txt)"
    out = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
