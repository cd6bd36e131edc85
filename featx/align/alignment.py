"""``featx.Alignment``: score new features (a model under training) against stored models, as
platonic-rep's ``platonic.Alignment(dataset, subset, models).score(feats, metric, topk)`` does.

The stored models are read once (sha256 verified) and kept prepared on ``device``; what a metric
needs of them (neighbour sets, kernels) is derived at its first use and cached per (metric, k), so a
training loop that scores every few steps reads and prepares the store's features only once.
``score`` is ``featx align --x MODELS --y FEATS.pt`` for one file: the same preparation, the same
metrics and, as the reference's ``Alignment.score``, the new features as the first argument of
each metric (it matters for ``cycle_knn``)."""

from __future__ import annotations

from typing import Callable

from featx import settings
from featx.align import calibration as C
from featx.align import metrics as M
from featx.align.run import (Entry, check_committed, check_enough_rows, check_options, check_same_rows, num_rows,
                             pick_device, read_prepared)
from featx.align.sides import build_side
from featx.errors import UsageError
from featx.pipeline.request import RunRequest
from featx.pipeline.stored import stored_models
from featx.store import Store, open_store

#: Per stored model id: the best score and its (layer of the new features, layer of the stored
#: model: the model's own layer number, as its manifest's ``layer_indices`` names it), None where no
#: layer pair scored above 0 (the reference's zero floor).
Scores = dict[str, tuple[float, tuple[int, int] | None]]


class Alignment:
    """Stored models to score new features against.

    ``models``: model ids, a modelset name or YAML file, ``MODELSET:MODALITY``, or a modality
    (``language``/``vision``/``all``: the models ``store`` holds for the data set). ``store``: a
    directory or ``s3://`` URL (default: ``FEATX_STORE`` / results/features). ``dataset``, ``subset``,
    ``pool``, ``caption_idx``, ``fmt`` as given to ``featx extract``. ``outliers`` and ``zero_floor``
    as ``featx align``'s ``--outliers`` and ``--no-zero-floor``; ``knn_index`` as its ``--knn_index``
    (``hnsw``: approximate neighbours, each state's recall in ``knn_recall``)."""

    def __init__(self, models: str | list[str], store: str | Store | None = None, *,
                 dataset: str = settings.DEFAULT_DATASET, subset: str | None = None, pool: str | None = None,
                 caption_idx: int = 0, fmt: str = "pt", device: str | None = None, outliers: str = "exact",
                 zero_floor: bool = True, knn_index: str = "exact", log: Callable[[str], None] = lambda msg: None):
        if outliers not in M.OUTLIER_MODES:
            raise UsageError(f"outliers={outliers!r}: choose one of {', '.join(M.OUTLIER_MODES)}")
        st = store if isinstance(store, Store) else open_store(store)

        def stored(modality: str, side_pool: str | None) -> list:
            request = RunRequest(dataset, subset, side_pool, caption_idx, format=fmt)
            return stored_models(st.scan(request.scan_prefix), request, modality)

        if isinstance(models, str):
            side = build_side(models, pool, None, None, stored, dataset, subset, caption_idx, fmt)
        else:
            side = build_side("all", pool, None, list(models), stored, dataset, subset, caption_idx, fmt)
        if any(e.key is None for e in side.entries):
            raise UsageError(f"{models!r}: name stored models; score your own features with .score(feats)")
        check_committed(st, side.entries, f" --dataset {dataset}" + (f" --subset {subset}" if subset else ""))
        check_same_rows(side.entries, log)
        self.entries: list[Entry] = side.entries
        self.device = pick_device(device)
        self.outliers, self.zero_floor, self.knn_index = outliers, zero_floor, knn_index
        self.num_rows = num_rows(self.entries)
        self._prepared = dict(read_prepared(st, self.entries, "best", self.device, outliers, log))
        self._states: dict[tuple, M.ModelState] = {}

    @property
    def models(self) -> list[str]:
        return [e.model_id for e in self.entries]

    def _state(self, entry: Entry, metric: str, topk: int) -> M.ModelState:
        key = (entry.source, metric, topk if M.uses_topk(metric) else None)
        if key not in self._states:
            self._states[key] = M.build_state(self._prepared[entry.source], [metric], topk, knn_index=self.knn_index)
        return self._states[key]

    def score(self, features: M.Features, metric: str = "mutual_knn", topk: int = 10, *, calibrate: int = 0,
              alpha: float = 0.05, seed: int = 0) -> Scores | dict[str, C.Calibrated]:
        """Best score over every layer pair of ``features`` (``[N, L, D]``, ``[N, D]`` or a list of
        ``[N, D_l]``, rows in the data set's order) against each stored model, as
        ``{model_id: (score, (feature layer, model layer) | None)}`` — the reference's return value.
        With ``calibrate=K``: ``{model_id: Calibrated}`` — raw best (max over layer pairs, no zero
        floor), calibrated score, add-one p-value and threshold against ``K`` permutations of the
        rows of ``features`` (seeded by ``seed``; :mod:`featx.align.calibration`)."""
        if metric not in M.METRICS:
            raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(M.METRICS)}")
        check_options([metric], topk)
        if calibrate:
            try:
                C.check_calibratable(metric)
                if self.knn_index != "exact":
                    raise ValueError("calibrate permutes exact neighbour lists for its null; use knn_index='exact'")
                if calibrate < 1 or not 0 < alpha < 1:
                    raise ValueError(f"calibrate={calibrate}, alpha={alpha}: give K >= 1 and 0 < alpha < 1")
            except ValueError as err:
                raise UsageError(str(err)) from err
        try:
            prepared = M.prepare_features(features, device=self.device, outliers=self.outliers)
        except (ValueError, AttributeError) as err:
            raise UsageError(f"features: {err}") from err
        n = prepared[0].shape[0]
        if n != self.num_rows:
            raise UsageError(f"features have {n} rows, the stored models {self.num_rows}: compute them on the "
                             "same data set rows, in its order")
        check_enough_rows([metric], topk, n)
        try:
            mine = M.build_state(prepared, [metric], topk, knn_index=self.knn_index)
        except ValueError as err:
            raise UsageError(f"features: {err}") from err
        if calibrate:
            return self._calibrated(prepared, mine, metric, topk, calibrate, alpha, seed)
        out: Scores = {}
        for e in self.entries:
            score, (i, j) = M.best_of(metric, M.layer_scores(metric, mine, self._state(e, metric, topk)),
                                      self.zero_floor)
            out[e.model_id] = (score, (i, e.layer(j)) if i >= 0 else None)
        return out


    def _calibrated(self, prepared: M.Prepared, mine: M.ModelState, metric: str, topk: int, k: int, alpha: float,
                    seed: int) -> dict[str, C.Calibrated]:
        others = [self._state(e, metric, topk) for e in self.entries]
        null = C.null_statistics(metric, prepared, others, C.permutations(prepared[0].shape[0], k, seed), topk,
                                 state_a=mine)
        out = {}
        for e, other, row in zip(self.entries, others, null):
            score, layers = C.statistic(M.layer_scores(metric, mine, other))
            layers = (layers[0], e.layer(layers[1])) if layers else None
            cal, p, tau = C.calibrate(score, row, alpha, C.upper_bound(metric, topk))
            out[e.model_id] = C.Calibrated(score, layers, cal, p, tau, k)
        return out
