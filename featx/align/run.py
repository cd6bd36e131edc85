"""``featx align``: every model of one side against every model of the other, every layer pair.

One run reads each feature file once (checksum verified), prepares it as the reference does
(0.95-quantile clamp over the model's whole tensor, per-layer L2 normalisation), derives what the
chosen metrics need (k-NN indices, kernels, ...) and drops the features; every pair is then scored
for all its layer pairs at once. Symmetric metrics are computed once per unordered model pair.

Outputs follow the reference's ``measure_alignment.py``:
``{out}/{dataset}/{subset}/{x}_pool-{pool_x}_{y}_pool-{pool_y}/{metric}_k{topk}.npy`` (``{metric}.npy``
for metrics without k) holding a dict with ``scores [Mx, My]`` and ``indices [Mx, My, 2]`` (the
reference's order: (layer of the y model, layer of the x model)), plus featx's own keys (model
ids, explicit ``layer_x``/``layer_y``, manifests' data identity, optionally every layer×layer
matrix), and a CSV table beside it.
"""

from __future__ import annotations

import csv
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from featx.align import metrics as M
from featx.align.results import save_results
from featx.catalog import ModelSpec
from featx.errors import UsageError
from featx.store import ArtifactKey, Manifest, Store

LAYER_MODES = ("best", "all", "last")
CSV_COLUMNS = ("model_x", "model_y", "metric", "topk", "score", "layer_x", "layer_y", "num_layers_x", "num_layers_y",
               "num_rows", "dataset", "subset", "dataset_revision", "rows_fingerprint", "pool_x", "pool_y",
               "modality_x", "modality_y", "family_x", "family_y", "params_x", "params_y")


@dataclass
class Entry:
    """One model on one side: what to read and, once read, what it is."""

    spec: ModelSpec
    key: ArtifactKey
    manifest: Manifest | None = None
    num_layers: int = 0
    num_params: int = 0
    layer_offset: int = 0  # first stored layer's index (--layers last keeps only the last)


@dataclass
class Side:
    label: str  # its part of the output directory name
    pool: str  # its pool label in the directory name
    entries: list[Entry]


@dataclass
class AlignResult:
    metric: str
    topk: int
    x: Side
    y: Side
    scores: np.ndarray  # [Mx, My]
    layer_x: np.ndarray  # [Mx, My] int
    layer_y: np.ndarray
    matrices: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (i, j) -> [Lx, Ly]
    seconds: float = 0.0
    pairs_computed: int = 0
    npy: Path | None = None
    csv: Path | None = None

    @property
    def indices(self) -> np.ndarray:
        """The reference's ``indices``: ``[Mx, My, 2]`` of (y layer, x layer), float."""
        return np.stack([self.layer_y, self.layer_x], axis=-1).astype(np.float64)


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- checks before reading anything -------------------------------------------------------------------

def check_options(metrics: list[str], topk: int) -> None:
    """Refuse a k the chosen metrics cannot use, before the store is touched."""
    if topk < 1:
        raise UsageError(f"--topk {topk}: give a positive number (the reference uses 10)")
    if "cknna" in metrics and topk < 2:
        raise UsageError("cknna needs --topk 2 or more (as the reference)")


def check_committed(store: Store, entries: list[Entry], extract_hint: str) -> None:
    """Attach manifests from one store listing; refuse (one line) when any model is not done."""
    prefixes = {f"{e.key.dataset}/{e.key.subset}/" for e in entries}
    states = {}
    for prefix in prefixes:
        states.update(store.scan(prefix))
    absent = []
    for e in entries:
        st = states.get(e.key.stem)
        if st is None or st.state != "done":
            state = st.state if st else "missing"
            why = f": {st.reason}" if st and st.reason else ""
            absent.append((e, f"{state}{why}"))
        else:
            e.manifest = st.manifest
    if absent:
        ids = sorted({e.spec.id for e, _ in absent})
        listed = ", ".join(f"{e.spec.id} (pool {e.key.pool}, {why})" for e, why in absent)
        raise UsageError(f"{len(absent)} feature file(s) not committed in {store.url}: {listed}; "
                         f"run `featx extract --models {' '.join(ids)}{extract_hint}` first")


def check_same_rows(entries: list[Entry]) -> None:
    """Every model must have been fed the same rows in the same order: one fingerprint, one N."""
    groups: dict[tuple[str, int], list[str]] = {}
    for e in entries:
        groups.setdefault((e.manifest.rows_fingerprint, e.manifest.num_rows), []).append(e.spec.id)
    if len(groups) > 1:
        parts = "; ".join(f"rows_fingerprint {fp[:12]} with {n} rows for {', '.join(dict.fromkeys(ids))}"
                          for (fp, n), ids in sorted(groups.items(), key=lambda kv: -len(kv[1])))
        raise UsageError(f"features were computed on different data ({parts}); re-extract the odd ones with the "
                         "same --dataset/--subset/--num_samples (`featx extract --force_remake --models ...`)")


# -- reading and preparing ------------------------------------------------------------------------------

def load_states(store: Store, entries: list[Entry], metrics, topk: int, layers: str, device: torch.device,
                log: Callable[[str], None] = print) -> dict[ArtifactKey, M.ModelState]:
    """Read each distinct feature file once (sha256 verified), prepare it, keep only its state."""
    from featx.features import load_key

    states: dict[ArtifactKey, M.ModelState] = {}
    by_key: dict[ArtifactKey, list[Entry]] = {}
    for e in entries:
        by_key.setdefault(e.key, []).append(e)
    for n, (key, group) in enumerate(by_key.items(), 1):
        t0 = time.perf_counter()
        try:
            feats = load_key(store, key)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(str(err).splitlines()[0]) from err
        x = feats.feats
        manifest = group[0].manifest
        if x.shape[0] != manifest.num_rows:
            raise UsageError(f"{key.data}: {x.shape[0]} rows but its manifest says {manifest.num_rows}; "
                             "re-extract it with `featx extract --force_remake`")
        num_layers = x.shape[1] if x.dim() == 3 else 1
        num_params = feats.tensors.get("num_params", 0)
        num_params = int(num_params.item() if isinstance(num_params, torch.Tensor) else num_params or 0)
        for e in group:
            e.num_layers, e.num_params = num_layers, num_params or e.spec.params
            e.layer_offset = num_layers - 1 if layers == "last" else 0
        try:
            prepared = M.prepare_features(x, device=device, layers=[num_layers - 1] if layers == "last" else None)
            del x, feats
            states[key] = M.build_state(prepared, metrics, topk)
        except ValueError as err:
            raise UsageError(f"{key.model}: {err}") from err
        del prepared
        gc.collect()
        log(f"read {n}/{len(by_key)} {group[0].spec.id}: {num_layers} layers, {manifest.num_rows} rows, "
            f"state {states[key].nbytes() / 2**20:.0f} MiB ({time.perf_counter() - t0:.1f}s)")
    return states


# -- scoring ----------------------------------------------------------------------------------------------

def score_pairs(metric: str, x: Side, y: Side, states: dict[ArtifactKey, M.ModelState], topk: int,
                keep_matrices: bool, log: Callable[[str], None] = print) -> AlignResult:
    """For every (x model, y model): the reference's ``compute_score(y_feats, x_feats)`` — every layer
    pair, best kept — with symmetric metrics computed once per unordered pair."""
    t0 = time.perf_counter()
    mx, my = len(x.entries), len(y.entries)
    res = AlignResult(metric, topk, x, y, np.zeros((mx, my)), np.zeros((mx, my), dtype=np.int64),
                      np.zeros((mx, my), dtype=np.int64))
    done: dict[tuple[ArtifactKey, ArtifactKey], tuple[torch.Tensor, tuple[int, int]]] = {}
    same_lists = [e.key for e in x.entries] == [e.key for e in y.entries]
    # reuse the other orientation where the metric is symmetric; cknna only in the reference's own
    # symmetric mode (x list == y list), where the reference itself reuses it
    reuse = metric in M.EXACTLY_SYMMETRIC or (metric in M.SYMMETRIC and same_lists)
    for i, ex in enumerate(x.entries):
        for j, ey in enumerate(y.entries):
            if (ey.key, ex.key) in done:
                mat, best = done[(ey.key, ex.key)]
            elif reuse and (ex.key, ey.key) in done:
                # as the reference's symmetric mode: the other orientation, transposed, indices reversed
                mat_t, best_t = done[(ex.key, ey.key)]
                mat, best = mat_t.T, best_t[::-1]
            else:
                mat = M.layer_scores(metric, states[ey.key], states[ex.key])  # [Ly, Lx], A = y as the reference
                best = M.best_layer_pair(mat)[1]
                done[(ey.key, ex.key)] = (mat, best)
                res.pairs_computed += 1
            ly, lx = best
            res.scores[i, j] = float(mat[ly, lx]) if ly >= 0 else float("nan")
            res.layer_x[i, j], res.layer_y[i, j] = lx + ex.layer_offset, ly + ey.layer_offset
            if keep_matrices:
                res.matrices[(i, j)] = mat.T.cpu().numpy()
    res.seconds = time.perf_counter() - t0
    log(f"{M.result_name(metric, topk)}: {mx}x{my} model pairs ({res.pairs_computed} computed) in {res.seconds:.1f}s")
    return res


# -- writing ----------------------------------------------------------------------------------------------

def result_dir(out: Path, dataset: str, subset: str, x: Side, y: Side) -> Path:
    return out / dataset / subset / f"{x.label}_pool-{x.pool}_{y.label}_pool-{y.pool}"


def write_result(res: AlignResult, out: Path, dataset: str, subset: str, layers: str) -> AlignResult:
    folder = result_dir(out, dataset, subset, res.x, res.y)
    folder.mkdir(parents=True, exist_ok=True)
    stem = M.result_name(res.metric, res.topk) + ("_layers-last" if layers == "last" else "")
    ref = res.x.entries[0].manifest if res.x.entries else res.y.entries[0].manifest
    payload = {
        "scores": res.scores,
        "indices": res.indices,
        "models_x": [e.spec.id for e in res.x.entries],
        "models_y": [e.spec.id for e in res.y.entries],
        "layer_x": res.layer_x,
        "layer_y": res.layer_y,
        "num_layers_x": [e.num_layers for e in res.x.entries],
        "num_layers_y": [e.num_layers for e in res.y.entries],
        "family_x": [e.spec.family for e in res.x.entries],
        "family_y": [e.spec.family for e in res.y.entries],
        "params_x": [e.num_params for e in res.x.entries],
        "params_y": [e.num_params for e in res.y.entries],
        "modality_x": [e.spec.modality for e in res.x.entries],
        "modality_y": [e.spec.modality for e in res.y.entries],
        "pool_x": [e.key.pool for e in res.x.entries],
        "pool_y": [e.key.pool for e in res.y.entries],
        "metric": res.metric,
        "topk": res.topk if M.uses_topk(res.metric) else None,
        "layers": layers,
        "dataset": dataset,
        "subset": subset,
        "dataset_revision": ref.dataset_revision,
        "rows_fingerprint": ref.rows_fingerprint,
        "num_rows": ref.num_rows,
        "label_x": res.x.label,
        "label_y": res.y.label,
    }
    if res.matrices:
        mats = np.empty((len(res.x.entries), len(res.y.entries)), dtype=object)
        for (i, j), m in res.matrices.items():
            mats[i, j] = m
        payload["layer_scores"] = mats  # [Mx, My] of [Lx, Ly] (x layer, y layer)
    res.npy = folder / f"{stem}.npy"
    _atomic(res.npy, lambda p: np.save(p, payload, allow_pickle=True))  # the reference's form, for other tools
    _atomic(res.npy.with_suffix(".npz"), lambda p: save_results(p, payload))  # what featx reads back: no pickle
    res.csv = folder / f"{stem}.csv"

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for i, ex in enumerate(res.x.entries):
                for j, ey in enumerate(res.y.entries):
                    w.writerow([ex.spec.id, ey.spec.id, res.metric, payload["topk"] if payload["topk"] else "",
                                f"{res.scores[i, j]:.8g}", int(res.layer_x[i, j]), int(res.layer_y[i, j]),
                                ex.num_layers, ey.num_layers, ex.manifest.num_rows, dataset, subset,
                                ex.manifest.dataset_revision or "", ex.manifest.rows_fingerprint, ex.key.pool,
                                ey.key.pool, ex.spec.modality, ey.spec.modality, ex.spec.family, ey.spec.family,
                                ex.num_params, ey.num_params])

    _atomic(res.csv, write_csv)
    return res


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npy":
        tmp = path.with_name(f".{path.stem}.tmp.npy")  # np.save appends .npy otherwise
    write(tmp)
    tmp.replace(path)


def align(store: Store, x: Side, y: Side, metrics: list[str], topk: int, layers: str, device: str | None,
          out: Path, extract_hint: str, log: Callable[[str], None] = print) -> Iterator[AlignResult]:
    """Every model of ``x`` against every model of ``y`` for each metric; yields each result once
    written. ``extract_hint`` completes the `featx extract` command a refusal suggests."""
    check_options(metrics, topk)
    everything = x.entries + y.entries
    check_committed(store, everything, extract_hint)
    check_same_rows(everything)
    n = everything[0].manifest.num_rows
    if any(M.uses_topk(m) for m in metrics) and not topk < n:
        raise UsageError(f"--topk {topk} needs more rows than that; the features have {n}")
    if any(m in ("unbiased_cka", "cknna") for m in metrics) and n < 4:
        raise UsageError(f"unbiased_cka/cknna need at least 4 rows; the features have {n}")
    dev = pick_device(device)
    log(f"{len(x.entries)} x {len(y.entries)} models, metrics {', '.join(metrics)}, {n} rows, device {dev}")
    states = load_states(store, everything, metrics, topk, layers, dev, log)
    key = everything[0].key
    for metric in metrics:
        res = score_pairs(metric, x, y, states, topk, layers == "all", log)
        yield write_result(res, out, key.dataset, key.subset, layers)
