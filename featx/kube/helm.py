"""The chart's run config as the real ``helm template`` renders it.

Helm is the one renderer of the chart and, through ``values.schema.json`` and the
``featx.validateValues`` template, the one validator of its values: ``featx render`` and
``featx reconcile -f`` take the ConfigMap helm renders and hand it to the same code the
controller runs on the mounted ConfigMap, so no second renderer can drift from the chart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from featx import settings
from featx.errors import UsageError
from featx.yamlfile import load_yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "featx"
KUBE_VERSION = "1.36.0"  # helm's offline default (v1.20) is below the chart's kubeVersion
CONFIGMAP_TEMPLATE = "templates/configmap.yaml"


def helm_binary() -> str:
    """``$FEATX_HELM``; else the helm beside this interpreter (``make install`` links it into
    ``.venv/bin``, so ``.venv/bin/featx render`` works without activating the venv); else PATH."""
    beside = Path(sys.executable).parent / "helm"
    found = settings.helm_override() or (str(beside) if os.access(beside, os.X_OK) else shutil.which("helm"))
    if not found:
        raise UsageError("helm not found on PATH: run `make install` (links helm into .venv/bin), install helm 3, "
                         "or set FEATX_HELM=/path/to/helm")
    return found


def chart_dir(path: str | Path | None = None) -> Path:
    d = Path(path) if path else CHART_DIR
    if not (d / "Chart.yaml").is_file():
        raise UsageError(f"no Helm chart at {d} (Chart.yaml missing); pass --chart PATH to the featx chart "
                         "(helm/featx in the featx repository)")
    return d


def _refusal(stderr: str) -> str:
    """helm's error text on one line: schema errors and ``featx.validateValues`` failures span lines."""
    lines = [ln.strip().removeprefix("Error:").strip().removeprefix("- ").strip() for ln in stderr.splitlines()]
    noise = ("featx:", "featx: invalid values:")
    text = ""
    for ln in (ln for ln in lines if ln and ln not in noise and not ln.startswith("Use --debug")):
        text += ln if not text or text.endswith(": ") else f"; {ln}"
        text += " " if ln.endswith(":") else ""
    # the schema's regular expressions run to hundreds of characters: the key's name says enough
    return re.sub(r"does not match pattern '[^']*'", "does not match its pattern in values.schema.json", text).strip()


def render_run_config(chart: str | Path | None = None, files: Iterable[str | Path] = (), sets: Iterable[str] = (),
                      release: str = "featx", namespace: str = "default") -> dict[str, Any]:
    """``run.yaml`` of the ConfigMap ``helm template`` renders for these values (``-f`` files, then
    ``--set`` assignments, in helm's own syntax and precedence)."""
    cmd = [helm_binary(), "template", release, str(chart_dir(chart)), "--namespace", namespace,
           "--kube-version", KUBE_VERSION, "--show-only", CONFIGMAP_TEMPLATE]
    for f in files:
        cmd += ["-f", str(f)]
    for s in sets:
        cmd += ["--set", s]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise UsageError(f"`helm template` did not finish in {e.timeout:.0f} s; run it by hand: {' '.join(cmd)}") from e
    if out.returncode:
        raise UsageError(f"helm refused the chart values: {_refusal(out.stderr)} (fix with -f FILE or --set KEY=VALUE)")
    configmap = load_yaml(out.stdout, "helm template's ConfigMap")
    return load_yaml(configmap["data"]["run.yaml"], "run.yaml of helm template's ConfigMap")
