"""``featx align`` results in a form that is read back without pickle: an ``.npz`` of plain numeric
arrays plus one JSON string. The reference-compatible ``.npy`` dict beside it needs
``allow_pickle=True`` to load (other tools may); featx itself only ever reads the ``.npz``, so a
crafted ``.npy`` under ``--out`` is never deserialised."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

META = "meta"  # the JSON string: every value of the payload that is not a numeric array
LAYER_SCORES = "layer_scores"  # object array [Mx, My] of [Lx, Ly] in the payload; one array per pair on disk


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_results(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (the ``.npy`` dict) to ``path``: numeric arrays as arrays, kept layer
    matrices as ``layer_scores/{i}_{j}``, everything else in one JSON string."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, value in payload.items():
        if name == LAYER_SCORES:
            meta[LAYER_SCORES] = list(value.shape)
            for (i, j), m in np.ndenumerate(value):
                if m is not None:
                    arrays[f"{LAYER_SCORES}/{i}_{j}"] = np.asarray(m)
        elif isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        else:
            meta[name] = value
    with open(path, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays, **{META: np.array(json.dumps(meta, default=_plain))})


def load_results(path: Path) -> dict[str, Any] | None:
    """The payload ``save_results`` wrote, read with ``allow_pickle=False``; None for a file that
    is not one (another tool's, a damaged one, or one holding object arrays)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = {name: npz[name] for name in npz.files}
        meta = json.loads(str(files.pop(META)))
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if not isinstance(meta, dict):
        return None
    data: dict[str, Any] = {**meta, **{k: v for k, v in files.items() if "/" not in k}}
    if LAYER_SCORES in meta:
        mats = np.empty(tuple(meta[LAYER_SCORES]), dtype=object)
        for name, m in files.items():
            if name.startswith(f"{LAYER_SCORES}/"):
                i, j = name.split("/", 1)[1].split("_")
                mats[int(i), int(j)] = m
        data[LAYER_SCORES] = mats
    return data
