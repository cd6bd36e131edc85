"""``featx align``: every model of one side against every model of the other, every layer pair.

One run reads each feature file once (checksum verified), prepares it as the reference does
(0.95-quantile clamp over the model's whole tensor, per-layer L2 normalisation), derives what the
chosen metrics need (k-NN indices, kernels, ...) and drops the features; every pair is then scored
for all its layer pairs at once. Symmetric metrics are computed once per unordered model pair.

Outputs follow the reference's ``measure_alignment.py``:
``{out}/{dataset}/{subset}/{x}_pool-{pool_x}_{y}_pool-{pool_y}/{metric}_k{topk}.npy`` (``{metric}.npy``
for metrics without k; ``layout="reference"``: the reference's own ``to_alignment_filename`` path)
holding a dict with ``scores [Mx, My]`` and ``indices [Mx, My, 2]`` (the reference's order: (layer of
the y model, layer of the x model); NaN where no layer pair scored above the zero floor), plus
featx's own keys (model ids, explicit ``layer_x``/``layer_y``, manifests' data identity, optionally
every layer×layer matrix), and a CSV table beside it.

A side may also be feature files of one's own (``Entry.path``): read as they are, no manifest.
"""

from __future__ import annotations

import csv
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from featx.align import calibration as C
from featx.align import metrics as M
from featx.align.results import save_results
from featx.align.rows import Rows, rows_of
from featx.align.rows import check_same_rows as _check_same_rows
from featx.catalog import ModelSpec
from featx.errors import UsageError
from featx.store import ArtifactKey, Manifest, Store

if TYPE_CHECKING:
    from featx.features import ShardedFeatures

LAYER_MODES = ("best", "all", "last")
CALIBRATION_COLUMNS = ("raw_max", "calibrated", "p_value", "threshold")
CSV_COLUMNS = ("model_x", "model_y", "metric", "topk", "score", "layer_x", "layer_y", "num_layers_x", "num_layers_y",
               "num_rows", "dataset", "subset", "dataset_revision", "rows_fingerprint", "pool_x", "pool_y",
               "modality_x", "modality_y", "family_x", "family_y", "params_x", "params_y", "bpb_x", "bpb_y")
FILE_FAMILY = "file"  # the family of features given as files
#: Per-model lists a result holds for each side (``models_x``, ``models_y``, ...): key -> Entry attribute.
PER_MODEL_KEYS = {"models": "model_id", "num_layers": "num_layers", "family": "family", "params": "num_params",
                  "bpb": "bpb", "modality": "modality", "pool": "pool", "knn_recall": "knn_recall",
                  "layer_indices": "layer_indices"}


@dataclass
class Entry:
    """One model on one side: what to read and, once read, what it is. A stored model has a spec
    and a key; features given as a file have only ``path``."""

    spec: ModelSpec | None
    key: ArtifactKey | None
    path: Path | None = None
    manifest: Manifest | None = None
    num_layers: int = 0
    num_rows: int = 0
    num_params: int = 0
    bpb: float | None = None  # language models' bits per byte on the data set (the reference's file)
    layer_indices: list[int] = field(default_factory=list)  # the model's layer each scored layer is
    shards: list[Manifest] = field(default_factory=list)  # a sharded model's manifests, in row order
    view: "ShardedFeatures | None" = None  # how a sharded model is read (featx.features)
    knn_recall: float | None = None  # approximate neighbours (--knn_index): mean recall@k over layers

    @property
    def source(self) -> ArtifactKey | Path:
        """What is read: one state per source, however many sides name it."""
        return self.path if self.path is not None else self.key

    @property
    def model_id(self) -> str:
        return self.spec.id if self.spec else str(self.path)

    def layer(self, position: int) -> int:
        """The model's layer number of stored layer ``position`` (-1 stays -1: no layer)."""
        return self.layer_indices[position] if self.layer_indices and position >= 0 else position

    @property
    def rows(self) -> Rows | None:
        """The rows its manifests say it was fed (None: features given as a file)."""
        if self.manifest is None:
            return None
        return rows_of(self.shards or [self.manifest])

    @property
    def family(self) -> str:
        return self.spec.family if self.spec else FILE_FAMILY

    @property
    def modality(self) -> str:
        return self.spec.modality if self.spec else ""

    @property
    def pool(self) -> str:
        return self.key.pool if self.key else ""


@dataclass
class Side:
    label: str  # its part of the output directory name
    pool: str | None  # its pool label in the directory name (None: files, no pool part)
    entries: list[Entry]
    modelset: str | None = None  # for the reference's layout: its modelset and modality
    modality: str = "all"

    @property
    def stored(self) -> list[Entry]:
        """The entries read from the store (not files)."""
        return [e for e in self.entries if e.key is not None]


@dataclass
class Calibration:
    """Per model pair ``[Mx, My]``: the permutation-null calibration of the max over the layer search
    (:mod:`featx.align.calibration`), the y side's rows permuted."""

    permutations: int
    alpha: float
    seed: int
    raw_max: np.ndarray  # T_obs: max over layer pairs, no zero floor
    calibrated: np.ndarray
    p_values: np.ndarray
    thresholds: np.ndarray


@dataclass
class AlignResult:
    metric: str
    topk: int
    x: Side
    y: Side
    scores: np.ndarray  # [Mx, My]
    layer_x: np.ndarray  # [Mx, My] int
    layer_y: np.ndarray  # -1 where no layer pair scored above the zero floor
    zero_floor: bool = True
    matrices: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (i, j) -> [Lx, Ly]
    seconds: float = 0.0
    pairs_computed: int = 0
    npy: Path | None = None
    csv: Path | None = None
    calibration: Calibration | None = None
    knn_index: str = "exact"  # how the neighbours were found (approximate ones: entries' knn_recall)

    @property
    def indices(self) -> np.ndarray:
        """The reference's ``indices``: ``[Mx, My, 2]`` of (y layer, x layer), float; NaN where the
        reference's are None (no layer pair above 0)."""
        idx = np.stack([self.layer_y, self.layer_x], axis=-1).astype(np.float64)
        idx[idx < 0] = np.nan
        return idx


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


def check_calibration(metrics: list[str], k: int, alpha: float, knn_index: str = "exact") -> None:
    """Refuse a calibration that cannot run, before the store is touched."""
    if not k:
        return
    if knn_index != "exact":
        raise UsageError(f"--calibrate permutes exact neighbour lists for its null; drop --knn_index {knn_index} "
                         "or --calibrate")
    if k < 1 or not 0 < alpha < 1:
        raise UsageError(f"--calibrate {k} --alpha {alpha}: give K >= 1 permutations and 0 < alpha < 1")
    distances = [m for m in metrics if M.is_distance(m)]
    if distances:
        raise UsageError(f"--calibrate is defined for similarities; drop {', '.join(distances)} or --calibrate")


def check_enough_rows(metrics: list[str], topk: int, n: int) -> None:
    if any(M.uses_topk(m) for m in metrics) and not topk < n:
        raise UsageError(f"--topk {topk} needs more rows than that; the features have {n}")
    if any(m in ("unbiased_cka", "cknna") for m in metrics) and n < 4:
        raise UsageError(f"unbiased_cka/cknna need at least 4 rows; the features have {n}")
    if "rsa" in metrics and n < 3:
        raise UsageError(f"rsa needs at least 3 rows (an RDM with 3 entries); the features have {n}")


def check_committed(store: Store, entries: list[Entry], extract_hint: str) -> None:
    """Attach manifests from one store listing (a sharded model's from its shards' listing: every
    shard of one layout committed); refuse (one line) when any model is not done."""
    from featx.features import load_sharded

    prefixes = {f"{e.key.dataset}/{e.key.subset}/" for e in entries}
    states = {}
    for prefix in prefixes:
        states.update(store.scan(prefix))
    absent = []
    for e in entries:
        st = states.get(e.key.stem)
        if st is not None and st.state == "done":
            e.manifest = st.manifest
            continue
        try:
            view = load_sharded(store, e.key, e.spec.id)
        except FileNotFoundError as err:
            absent.append((e, str(err).split("; ")[0].removeprefix(f"{e.key.model_stem} in {store.url} ")))
            continue
        if view is not None:
            e.view, e.shards, e.manifest = view, view.manifests, view.manifest
            continue
        state = st.state if st else "missing"
        why = f": {st.reason}" if st and st.reason else ""
        absent.append((e, f"{state}{why}"))
    if absent:
        ids = sorted({e.spec.id for e, _ in absent})
        listed = ", ".join(f"{e.spec.id} (pool {e.key.pool}, {why})" for e, why in absent)
        raise UsageError(f"{len(absent)} feature file(s) not committed in {store.url}: {listed}; "
                         f"run `featx extract --models {' '.join(ids)}{extract_hint}` first")


def check_same_rows(entries: list[Entry], log: Callable[[str], None] = print) -> None:
    """Every model must have been fed the same rows in the same order (:mod:`featx.align.rows`;
    files carry no fingerprint: their N is checked once read)."""
    named = list({e.spec.id: e.rows for e in entries if e.manifest is not None}.items())
    for note in _check_same_rows(named):
        log(note)


def num_rows(entries: list[Entry]) -> int:
    """N of the stored models (their manifests'), checked the same by :func:`check_same_rows`."""
    return entries[0].rows.num_rows


# -- reading and preparing ------------------------------------------------------------------------------

def read_file(path: Path) -> tuple[M.Features, dict]:
    """Features of one's own: a ``.pt`` holding the reference's dict (``feats``: ``[N, L, D]`` or a
    list of ``[N, D_l]``) or the bare tensor/list, loaded without executing pickled code."""
    from featx.store.formats import read_tensors

    try:
        data = read_tensors(path, "pt")
    except Exception as err:  # torch raises many kinds for a file that is not a weights-only .pt
        raise UsageError(f"{path}: not a readable .pt feature file (torch.load with weights_only=True: "
                         f"{type(err).__name__}); save it with torch.save({{'feats': feats}}, path)") from err
    tensors = data if isinstance(data, dict) else {"feats": data}
    feats = tensors.get("feats")
    if not (isinstance(feats, torch.Tensor) or (isinstance(feats, (list, tuple)) and feats
                                                and all(isinstance(f, torch.Tensor) for f in feats))):
        raise UsageError(f"{path}: no features in it; save a [N, L, D] tensor or a list of [N, D] "
                         "tensors, alone or as {'feats': ...}")
    return feats, tensors


def _scalar(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def read_prepared(store: Store | None, entries: list[Entry], layers: str, device: torch.device,
                  outliers: str = "exact", log: Callable[[str], None] = print
                  ) -> Iterator[tuple[ArtifactKey | Path, M.Prepared]]:
    """Read each distinct source once (stored ones sha256 verified), fill in what its entries are
    (layers, rows, parameters, bpb) and yield it prepared as the reference prepares features."""
    from featx.features import load_key

    by_source: dict[ArtifactKey | Path, list[Entry]] = {}
    for e in entries:
        by_source.setdefault(e.source, []).append(e)
    for n, (source, group) in enumerate(by_source.items(), 1):
        t0 = time.perf_counter()
        if isinstance(source, Path):
            x, tensors = read_file(source)
        elif group[0].view is not None:  # row shards, memory-mapped, joined once into [N, L, D]
            try:
                x, tensors = group[0].view.feats, group[0].view.scalars
            except (ValueError, FileNotFoundError) as err:
                raise UsageError(str(err).splitlines()[0]) from err
        else:
            try:
                loaded = load_key(store, source, group[0].spec.id if group[0].spec else None)
            except (ValueError, FileNotFoundError) as err:
                raise UsageError(str(err).splitlines()[0]) from err
            x, tensors = loaded.feats, loaded.tensors
        rows, depth = M.num_rows(x), M.num_layers(x)
        expected = group[0].rows
        if expected is not None and rows != expected.num_rows:
            raise UsageError(f"{source.data}: {rows} rows but its manifest says {expected.num_rows}; "
                             "re-extract it with `featx extract --force_remake`")
        indices = _layer_indices(group[0].manifest, depth)
        num_params = int(_scalar(tensors.get("num_params")) or 0)
        for e in group:
            e.num_layers, e.num_rows, e.bpb = depth, rows, _scalar(tensors.get("bpb"))
            e.num_params = num_params or (e.spec.params if e.spec else 0)
            e.layer_indices = indices[-1:] if layers == "last" else indices
        try:
            prepared = M.prepare_features(x, device=device, layers=[depth - 1] if layers == "last" else None,
                                          outliers=outliers)
        except ValueError as err:
            raise UsageError(f"{group[0].model_id}: {err}") from err
        del x, tensors
        log(f"read {n}/{len(by_source)} {group[0].model_id}: {depth} layers, {rows} rows "
            f"({time.perf_counter() - t0:.1f}s)")
        yield source, prepared


def _layer_indices(manifest: Manifest | None, depth: int) -> list[int]:
    """The model's layer each stored layer is: the manifest's ``layer_indices`` (``featx extract
    --layers``), else all of them in order."""
    indices = list(manifest.layer_indices) if manifest is not None and manifest.layer_indices else list(range(depth))
    if len(indices) != depth:
        raise UsageError(f"{manifest.data_key}: {depth} layers but its manifest names {len(indices)} "
                         "(layer_indices); re-extract it with `featx extract --force_remake`")
    return indices


def check_rows(entries: list[Entry]) -> None:
    """One N for everything read (files have no fingerprint to compare, but their N must match)."""
    counts: dict[int, list[str]] = {}
    for e in entries:
        counts.setdefault(e.num_rows, []).append(e.model_id)
    if len(counts) > 1:
        parts = "; ".join(f"{n} rows in {', '.join(dict.fromkeys(ids))}" for n, ids in sorted(counts.items()))
        raise UsageError(f"features have different row counts ({parts}); compute them all on the same data set rows")


def load_states(store: Store | None, entries: list[Entry], metrics, topk: int, layers: str, device: torch.device,
                outliers: str = "exact", log: Callable[[str], None] = print,
                keep_layers: frozenset = frozenset(), knn_index: str = "exact") -> dict[ArtifactKey | Path, M.ModelState]:
    """Read each distinct source once, prepare it, keep only what ``metrics`` need of it (and the
    prepared layers of the sources in ``keep_layers``, which calibration permutes). With an
    approximate ``knn_index`` each model's recall@k against exact neighbours is logged and kept."""
    states: dict[ArtifactKey | Path, M.ModelState] = {}
    names = {e.source: e.model_id for e in entries}
    for source, prepared in read_prepared(store, entries, layers, device, outliers, log):
        check_enough_rows(metrics, topk, prepared[0].shape[0])
        try:
            states[source] = M.build_state(prepared, metrics, topk, knn_index=knn_index)
        except ValueError as err:
            raise UsageError(f"{names[source]}: {err}") from err
        recall = states[source].knn_recall
        if recall is not None:
            for e in entries:
                if e.source == source:
                    e.knn_recall = sum(recall) / len(recall)
            log(f"{names[source]}: {knn_index} neighbours, recall@{topk} vs exact "
                f"{', '.join(f'{r:.4f}' for r in recall)} (per layer, {min(M.num_rows(prepared), 1000)} sampled rows)")
        if source in keep_layers:
            states[source].layers = prepared
        del prepared
        gc.collect()
        log(f"{names[source]}: state {states[source].nbytes() / 2**20:.0f} MiB")
    check_rows(entries)
    return states


# -- scoring ----------------------------------------------------------------------------------------------

def score_pairs(metric: str, x: Side, y: Side, states: dict[ArtifactKey | Path, M.ModelState], topk: int,
                keep_matrices: bool, log: Callable[[str], None] = print, zero_floor: bool = True,
                calibrate: tuple[int, float, int] | None = None) -> AlignResult:
    """For every (x model, y model): the reference's ``compute_score(y_feats, x_feats)`` — every layer
    pair, best kept (above 0 with ``zero_floor``, as the reference) — with symmetric metrics computed
    once per unordered pair."""
    t0 = time.perf_counter()
    mx, my = len(x.entries), len(y.entries)
    res = AlignResult(metric, topk, x, y, np.zeros((mx, my)), np.zeros((mx, my), dtype=np.int64),
                      np.zeros((mx, my), dtype=np.int64), zero_floor)
    done: dict[tuple, tuple[torch.Tensor, float, tuple[int, int]]] = {}
    same_lists = [e.source for e in x.entries] == [e.source for e in y.entries]
    # reuse the other orientation where the metric is symmetric; cknna only in the reference's own
    # symmetric mode (x list == y list), where the reference itself reuses it
    reuse = metric in M.EXACTLY_SYMMETRIC or (metric in M.SYMMETRIC and same_lists)
    for i, ex in enumerate(x.entries):
        for j, ey in enumerate(y.entries):
            if (ey.source, ex.source) in done:
                mat, score, best = done[(ey.source, ex.source)]
            elif reuse and (ex.source, ey.source) in done:
                # as the reference's symmetric mode: the other orientation, transposed, indices reversed
                mat_t, score, best_t = done[(ex.source, ey.source)]
                mat, best = mat_t.T, best_t[::-1]
            else:
                mat = M.layer_scores(metric, states[ey.source], states[ex.source])  # [Ly, Lx], A = y as the reference
                score, best = M.best_of(metric, mat, zero_floor)
                done[(ey.source, ex.source)] = (mat, score, best)
                res.pairs_computed += 1
            ly, lx = best
            res.scores[i, j] = score
            res.layer_x[i, j], res.layer_y[i, j] = ex.layer(lx), ey.layer(ly)
            if keep_matrices:
                res.matrices[(i, j)] = mat.T.cpu().numpy()
    if calibrate:
        res.calibration = calibrate_pairs(metric, x, y, states, topk, *calibrate)
    res.seconds = time.perf_counter() - t0
    log(f"{M.result_name(metric, topk)}: {mx}x{my} model pairs ({res.pairs_computed} computed) in {res.seconds:.1f}s")
    return res


def calibrate_pairs(metric: str, x: Side, y: Side, states: dict[ArtifactKey | Path, M.ModelState], topk: int,
                    k: int, alpha: float, seed: int) -> Calibration:
    """Every (x, y) model pair calibrated against the same ``k`` seeded permutations of the rows: each
    y model permuted once per permutation, its state scored against every x model's at once."""
    mx, my = len(x.entries), len(y.entries)
    cal = Calibration(k, alpha, seed, *(np.zeros((mx, my)) for _ in range(4)))
    perms = C.permutations(x.entries[0].num_rows, k, seed)
    smax = C.upper_bound(metric, topk)
    others = [states[ex.source] for ex in x.entries]
    nulls: dict = {}
    for j, ey in enumerate(y.entries):
        a = states[ey.source]
        if ey.source not in nulls:
            nulls[ey.source] = C.null_statistics(metric, a.layers, others, perms, topk, state_a=a)
        for i, ex in enumerate(x.entries):
            obs, _ = C.statistic(M.layer_scores(metric, a, states[ex.source]))
            cal.raw_max[i, j] = obs
            cal.calibrated[i, j], cal.p_values[i, j], cal.thresholds[i, j] = C.calibrate(
                obs, nulls[ey.source][i], alpha, smax)
    return cal


# -- writing ----------------------------------------------------------------------------------------------

def _side_dir(side: Side) -> str:
    return side.label if side.pool is None else f"{side.label}_pool-{side.pool}"


def result_dir(out: Path, dataset: str, subset: str, x: Side, y: Side) -> Path:
    return out / dataset / subset / f"{_side_dir(x)}_{_side_dir(y)}"


def reference_path(out: Path, dataset: str, x: Side, y: Side, metric: str, topk: int) -> Path:
    """The reference's ``to_alignment_filename(out, dataset, modelset, modality_x, pool_x, prompt_x,
    modality_y, pool_y, prompt_y, metric, topk)``: the modelset where featx puts the subset, the
    sides by modality, prompts always False (featx extracts without the reference's prompt)."""
    sets = {s.modelset for s in (x, y) if s.modelset}
    if len(sets) != 1:
        named = " and ".join(sorted(sets)) or "none"
        raise UsageError(f"--layout reference needs both sides from one modelset (got {named}); "
                         "use --modelset NAME with --x/--y MODALITY, or the default --layout featx")
    sides = "_".join(f"{s.modality}_pool-{s.pool}_prompt-False" for s in (x, y))
    return out / dataset / sets.pop() / sides / f"{M.result_name(metric, topk)}.npy"


def result_path(out: Path, dataset: str, subset: str, x: Side, y: Side, metric: str, topk: int, layers: str,
                layout: str = "featx") -> Path:
    if layout == "reference":
        return reference_path(out, dataset, x, y, metric, topk)
    stem = M.result_name(metric, topk) + ("_layers-last" if layers == "last" else "")
    return result_dir(out, dataset, subset, x, y) / f"{stem}.npy"


def write_result(res: AlignResult, path: Path, dataset: str, subset: str, layers: str) -> AlignResult:
    path.parent.mkdir(parents=True, exist_ok=True)
    everything = res.x.entries + res.y.entries
    ref = next((e for e in everything if e.manifest is not None), None)
    payload = {
        "scores": res.scores,
        "indices": res.indices,
        "layer_x": res.layer_x,
        "layer_y": res.layer_y,
        **{f"{name}_{tag}": [getattr(e, attr) for e in side.entries]
           for name, attr in PER_MODEL_KEYS.items() for tag, side in (("x", res.x), ("y", res.y))},
        "metric": res.metric,
        "kind": M.REGISTRY[res.metric].kind,
        "topk": res.topk if M.uses_topk(res.metric) else None,
        "zero_floor": res.zero_floor,
        "knn_index": res.knn_index,
        "layers": layers,
        "dataset": dataset,
        "subset": subset,
        "dataset_revision": ref.manifest.dataset_revision if ref else None,
        "rows_fingerprint": ref.rows.fingerprint if ref else None,
        "num_rows": everything[0].num_rows,
        "label_x": res.x.label,
        "label_y": res.y.label,
    }
    if res.calibration is not None:
        c = res.calibration
        payload.update({"calibrate": c.permutations, "alpha": c.alpha, "seed": c.seed, "raw_max": c.raw_max,
                        "calibrated_scores": c.calibrated, "p_values": c.p_values, "thresholds": c.thresholds})
    if res.matrices:
        mats = np.empty((len(res.x.entries), len(res.y.entries)), dtype=object)
        for (i, j), m in res.matrices.items():
            mats[i, j] = m
        payload["layer_scores"] = mats  # [Mx, My] of [Lx, Ly] (x layer, y layer)
    res.npy = path
    _atomic(res.npy, lambda p: np.save(p, payload, allow_pickle=True))  # the reference's form, for other tools
    _atomic(res.npy.with_suffix(".npz"), lambda p: save_results(p, payload))  # what featx reads back: no pickle
    res.csv = path.with_suffix(".csv")

    def layer(value) -> str:
        return str(int(value)) if value >= 0 else ""

    def calibration(i: int, j: int) -> list[str]:
        c = res.calibration
        if c is None:
            return [""] * len(CALIBRATION_COLUMNS)
        return [f"{v[i, j]:.8g}" for v in (c.raw_max, c.calibrated, c.p_values, c.thresholds)]

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS + CALIBRATION_COLUMNS)
            for i, ex in enumerate(res.x.entries):
                for j, ey in enumerate(res.y.entries):
                    w.writerow([ex.model_id, ey.model_id, res.metric, payload["topk"] if payload["topk"] else "",
                                f"{res.scores[i, j]:.8g}", layer(res.layer_x[i, j]), layer(res.layer_y[i, j]),
                                ex.num_layers, ey.num_layers, ex.num_rows, dataset, subset,
                                payload["dataset_revision"] or "", payload["rows_fingerprint"] or "", ex.pool,
                                ey.pool, ex.modality, ey.modality, ex.family, ey.family,
                                ex.num_params, ey.num_params, "" if ex.bpb is None else f"{ex.bpb:.6g}",
                                "" if ey.bpb is None else f"{ey.bpb:.6g}", *calibration(i, j)])

    _atomic(res.csv, write_csv)
    return res


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npy":
        tmp = path.with_name(f".{path.stem}.tmp.npy")  # np.save appends .npy otherwise
    write(tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class Options:
    """How scores are computed and written (the CLI's alignment flags)."""

    metrics: tuple[str, ...] = ("mutual_knn",)
    topk: int = 10
    layers: str = "best"
    device: str | None = None
    outliers: str = "exact"  # the reference's remove_outliers(exact=True); "quantile": its default CLI
    zero_floor: bool = True  # the reference keeps a best layer pair only above 0
    layout: str = "featx"
    calibrate: int = 0  # permutations of the null (0: no calibration)
    alpha: float = 0.05
    seed: int = 0
    knn_index: str = "exact"  # or hnsw: approximate neighbours (featx.align.ann), recall reported


def align(store: Store, x: Side, y: Side, opts: Options, out: Path, extract_hint: str,
          log: Callable[[str], None] = print) -> Iterator[AlignResult]:
    """Every model of ``x`` against every model of ``y`` for each metric; yields each result once
    written. ``extract_hint`` completes the `featx extract` command a refusal suggests."""
    metrics = list(opts.metrics)
    check_options(metrics, opts.topk)
    check_calibration(metrics, opts.calibrate, opts.alpha, opts.knn_index)
    everything = x.entries + y.entries
    stored = x.stored + y.stored
    if opts.layout == "reference" and opts.layers == "last":
        raise UsageError("--layout reference holds the reference's best-layer results; drop --layers last")
    key = stored[0].key if stored else None
    dataset, subset = (key.dataset, key.subset) if key else ("files", "default")
    paths = {m: result_path(out, dataset, subset, x, y, m, opts.topk, opts.layers, opts.layout) for m in metrics}
    check_committed(store, stored, extract_hint)
    check_same_rows(stored, log)
    if stored:
        check_enough_rows(metrics, opts.topk, num_rows(stored))
    dev = pick_device(opts.device)
    log(f"{len(x.entries)} x {len(y.entries)} models, metrics {', '.join(metrics)}, device {dev}, outliers "
        f"{opts.outliers}, {'best score floored at 0 (reference)' if opts.zero_floor else 'no zero floor'}")
    keep = frozenset(e.source for e in y.entries) if opts.calibrate else frozenset()
    states = load_states(store, everything, metrics, opts.topk, opts.layers, dev, opts.outliers, log, keep,
                         opts.knn_index)
    calibrate = (opts.calibrate, opts.alpha, opts.seed) if opts.calibrate else None
    for metric in metrics:
        res = score_pairs(metric, x, y, states, opts.topk, opts.layers == "all", log, opts.zero_floor, calibrate)
        if M.uses_topk(metric) and metric != "cknna":  # cknna takes exact neighbours (the reference's topk)
            res.knn_index = opts.knn_index
        yield write_result(res, paths[metric], dataset, subset, opts.layers)
