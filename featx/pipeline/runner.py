"""Run extraction for many models into one store: skip what is done, keep going past failures,
commit each model whole or not at all (manifest last), record failures, and summarise. A
Kubernetes Job runs this for one model. Turning rows into tensors is ``featx.extract``'s part."""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from featx import __version__, settings
from featx.catalog.spec import ModelSpec
from featx.data.datasets import Rows
from featx.display import RunDisplay
from featx.errors import EXIT_OK, OOM, PERMANENT, TRANSIENT, FeatxError, disk_full, policy_of
from featx.extract.loading import Loaded, pick_device, planned_dtype
from featx.extract.result import Extraction
from featx.extract.runner import ExtractOptions, extract_rows, feature_bytes_per_row, free_memory, load_model
from featx.logs import EventLog, Progress
from featx.pipeline.request import RunRequest, judge, judge_stored
from featx.pipeline.stored import verified
from featx.signals import Interrupted
from featx.store import ArtifactKey, FailureRecord, Manifest, Store, sha256_file
from featx.store.base import CommittedByAnother
from featx.store.keys import SHARD_PREFIX
from featx.store.formats import feats_dtype, feats_shape, feature_layers, layer_shapes, select, write_tensors
from featx.store.records import RunIdentity, StoredState
from featx.pipeline.layers import layer_indices
from featx.pipeline.shards import ShardLayout, format_indices, stored_layout


@dataclass
class RunOptions:
    """How a run treats the store and its attempts, around the extraction options."""

    extract: ExtractOptions = field(default_factory=ExtractOptions)
    force_remake: bool = False
    verify: bool = False  # read and hash committed files before skipping them
    attempt: int = 1  # set by the Kubernetes controller
    gpu_class: str | None = None


@dataclass
class ModelOutcome:
    model: str
    status: str  # committed | skipped | failed
    seconds: float = 0.0
    rows_per_s: float | None = None
    reason: str = ""
    kind: str = ""  # failure kind: permanent | transient | oom
    where: str = ""


@dataclass
class RunSummary:
    outcomes: list[ModelOutcome] = field(default_factory=list)
    interrupted: Interrupted | None = None  # the stop signal that ended the run early
    in_progress: str | None = None  # the model being extracted or committed when it came
    in_progress_shards: tuple[int, int] | None = None  # (committed, of) when it is stored in row shards
    not_started: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        kinds = {o.kind for o in self.outcomes if o.status == "failed"}
        if not kinds:
            return EXIT_OK
        # a retry may help the transient ones, a larger GPU the oom ones: say the most hopeful
        return next(p.exit_code for p in (TRANSIENT, OOM, PERMANENT) if p.kind in kinds)

    def table(self) -> str:
        rows = [("model", "status", "seconds", "rows/s", "detail")]
        for o in self.outcomes:
            rows.append((o.model, o.status, f"{o.seconds:.1f}", f"{o.rows_per_s:.1f}" if o.rows_per_s else "-",
                         o.reason or o.where))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)

    def interruption(self) -> str:
        """One line: what an interrupted run committed and what it did not."""
        def models(status: str) -> list[str]:
            return [o.model for o in self.outcomes if o.status == status]

        committed, skipped, failed = models("committed"), models("skipped"), models("failed")
        parts = [f"committed {', '.join(committed)}" if committed else "committed nothing"]
        if skipped:
            parts.append(f"{len(skipped)} already done")
        if failed:
            parts.append(f"failed: {', '.join(failed)}")
        pending = [f"{len(self.not_started)} not started"] if self.not_started else []
        if self.in_progress and self.in_progress_shards:  # its committed shards stand
            done, total = self.in_progress_shards
            parts.append(f"{self.in_progress}: {done}/{total} shards committed, the other {total - done} "
                         "are extracted by a rerun")
        elif self.in_progress:
            pending.insert(0, f"{self.in_progress} (in progress)")
        line = f"interrupted by {self.interrupted.name if self.interrupted else 'a signal'}: {'; '.join(parts)}"
        return line + (f"; not committed: {', '.join(pending)}" if pending else "")


class Runner:
    def __init__(self, store: Store, rows: Rows, request: RunRequest, opts: RunOptions | None = None,
                 log: EventLog | None = None):
        self.store, self.rows, self.request = store, rows, request
        self.opts = opts or RunOptions()
        self.log = log or EventLog()
        self.device = pick_device(self.opts.extract.device)
        self._fingerprint: str | None = None
        self._shard_prints: dict[tuple[ShardLayout, int], str] = {}
        self._display: RunDisplay | None = None  # the run's terminal display, while run() is in progress
        self._sharded: ShardLayout | None = None  # the layout of the model run_one extracts, when in shards

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.rows.fingerprint
        return self._fingerprint

    def identity(self, spec: ModelSpec) -> RunIdentity:
        """What this run produces for ``spec``: a committed file counts as done only if it is this."""
        return self.request.identity(spec, rows_fingerprint=self.fingerprint, num_rows=len(self.rows),
                                     compute_dtype=planned_dtype(spec, self.device))

    def run(self, specs: list[ModelSpec]) -> RunSummary:
        keys = [self.request.key(spec) for spec in specs]  # refuses bad pools before any work
        summary = RunSummary()
        display = self._display = RunDisplay(self.log, specs)
        try:
            states = self.store.scan(self.request.scan_prefix)
            if self.opts.verify and not self.opts.force_remake:
                states = verified(self.store, states, [k.stem for k in keys])
            with display:
                for spec, key in zip(specs, keys):
                    layout = self._known_layout(key, states)
                    if layout is None:
                        todo = None
                        done = self._done(spec, states.get(key.stem), self.identity(spec))
                        if done:
                            self.log.event("skipped", model=spec.id, reason="already committed",
                                           where=f"{self.store.url}/{key.data}")
                    else:
                        todo = self._missing_shards(spec, key, layout, states)
                        done = todo == []
                    if done:
                        summary.outcomes.append(ModelOutcome(spec.id, "skipped", reason="done"))
                        display.ended(spec.id, "skipped")
                        continue
                    summary.in_progress = spec.id
                    display.started(spec.id)
                    outcome = self.run_one(spec, key, states, layout, todo)
                    summary.outcomes.append(outcome)
                    display.ended(spec.id, outcome.status, outcome.seconds)
                    summary.in_progress = None
        except Interrupted as stop:  # SIGTERM/SIGINT under featx.signals.stop_on_signals
            summary.interrupted = stop
            now = None
            if summary.in_progress is not None:
                with contextlib.suppress(FeatxError):  # unreadable now: reported as not committed
                    now = self.store.state(key)
            before = states.get(key.stem)
            if summary.in_progress is not None and self._sharded is not None:
                summary.in_progress_shards = self._committed_shards(spec, key, self._sharded)
            if summary.in_progress_shards and summary.in_progress_shards[0] == summary.in_progress_shards[1]:
                # the signal came during the last shard's commit, held until its manifest was written
                summary.outcomes.append(ModelOutcome(summary.in_progress, "committed",
                                                     where=f"{self.store.url}/{key.model_stem}/"))
                summary.in_progress = summary.in_progress_shards = None
            elif now and now.state == "done" and now.manifest != (before.manifest if before else None):
                # the signal came during the commit, held until its new manifest was written
                summary.outcomes.append(ModelOutcome(summary.in_progress, "committed", where=f"{self.store.url}/{key.data}"))
                summary.in_progress = None
            done = len(summary.outcomes) + (summary.in_progress is not None)
            summary.not_started = [spec.id for spec in specs[done:]]
            self.log.event("interrupted", signal=stop.name, in_progress=summary.in_progress,
                           not_started=len(summary.not_started))
        return summary

    def _committed_shards(self, spec: ModelSpec, key: ArtifactKey, layout: ShardLayout) -> tuple[int, int] | None:
        """(committed, of) shards of ``layout`` the store holds for ``spec`` now; None when unreadable."""
        with contextlib.suppress(FeatxError):
            states = self.store.scan(key.model_stem)
            return judge_stored(states, key.model_stem, self.request.identity(spec), layout.num_shards).shards
        return None

    def _done(self, spec: ModelSpec, stored: StoredState | None, wanted: RunIdentity, **where: str) -> bool:
        """Whether ``stored`` counts as done for ``wanted`` (never under --force_remake); a corrupt or
        stale one is logged as redone (``where``: which shard)."""
        state = judge(stored, wanted)
        if state.state == "done" and not self.opts.force_remake:
            return True
        if state.state in ("corrupt", "stale"):
            self.log.event("redo", model=spec.id, **where, reason=state.reason)
        return False

    def _known_layout(self, key: ArtifactKey, states: dict[str, StoredState]) -> ShardLayout | None:
        """The shard layout known before the model loads: the request's, else (automatic) that of
        shards already committed for the model; None: one file, unless the loaded model's features
        turn out large (``run_one``)."""
        asked = self.request.layout(len(self.rows))
        if asked is not None or self.request.shard_rows or self.request.num_shards:
            return asked
        return stored_layout(states, key.model_stem, len(self.rows))

    def _shard_identity(self, spec: ModelSpec, layout: ShardLayout, index: int) -> RunIdentity:
        """Shard ``index``'s identity: its rows' fingerprint and count (computed once per shard)."""
        start, end = layout.bounds(index)
        if (layout, index) not in self._shard_prints:
            self._shard_prints[(layout, index)] = self.rows.slice(start, end).fingerprint
        return self.request.identity(spec, rows_fingerprint=self._shard_prints[(layout, index)], num_rows=end - start,
                                     compute_dtype=planned_dtype(spec, self.device), shard=(index, layout))

    def _missing_shards(self, spec: ModelSpec, key: ArtifactKey, layout: ShardLayout,
                        states: dict[str, StoredState]) -> list[int]:
        """The shards of ``layout`` this run extracts (``--shard_index``/``--shard_indices``: those),
        logging the committed ones it skips and why any other is redone."""
        wanted = self.request.wanted_shards(layout.num_shards)
        todo, done = [], []
        for index in wanted:
            shard_key = key.shard(index, layout.num_shards)
            stored = states.get(shard_key.stem)
            shard_done = self._done(spec, stored, self._shard_identity(spec, layout, index), shard=shard_key.stem)
            (done if shard_done else todo).append(index)
        if done:
            self.log.event("skipped", model=spec.id, reason=f"{len(done)}/{layout.num_shards} shards already committed",
                           shards=format_indices(done), where=f"{self.store.url}/{key.model_stem}/")
        return todo

    def run_one(self, spec: ModelSpec, key: ArtifactKey, states: dict[str, StoredState] | None = None,
                layout: ShardLayout | None = None, todo: list[int] | None = None) -> ModelOutcome:
        """Extract ``spec`` and commit it: one file, or (``layout``, given or found large enough
        once the model is loaded) the shards ``todo`` (None: every one not committed)."""
        t0 = time.perf_counter()
        ex = self.opts.extract
        self._sharded = None
        self.log.event("start", model=spec.id, attempt=self.opts.attempt, gpu_class=self.opts.gpu_class or self.device,
                       batch_plan={"batch_size": ex.batch_size or "auto", "token_budget": ex.token_budget or "auto"},
                       dataset=f"{self.rows.name}@{self.rows.revision or self.rows.subset}", rows=len(self.rows),
                       pool=key.pool, **self._where(key, layout, todo))
        loaded = None
        try:
            loaded = load_model(spec, self.device, self.request.init, self.request.seed,
                                spec.quantised(self.request.qlora))
            if layout is None:
                layout = self.request.layout(len(self.rows), feature_bytes_per_row(loaded))
                if layout is not None:  # automatic: the loaded model's features are large
                    self.log.event("sharded", model=spec.id, reason="about "
                                   f"{settings.auto_shard_bytes() / 2**30:g} GiB of features per shard",
                                   **self._where(key, layout, None))
            if layout is not None:
                if todo is None:
                    todo = self._missing_shards(spec, key, layout, states or {})
                return self._run_shards(spec, key, loaded, layout, todo, t0)
            result = self._extract(spec, loaded, self.rows, key.pool)
            manifest = self._commit(spec, key, loaded, result, self.identity(spec), len(self.rows))
            seconds = time.perf_counter() - t0
            where = f"{self.store.url}/{manifest.data_key}"
            self.log.event("committed", model=spec.id, where=where, seconds=round(seconds, 2),
                           shape=manifest.shape, sha256=manifest.sha256[:16])
            return ModelOutcome(spec.id, "committed", seconds, len(self.rows) / max(seconds, 1e-9), where=where)
        except CommittedByAnother as e:  # a concurrent writer's commit stands: the model is done
            self.log.event("skipped", model=spec.id, reason=str(e))
            return ModelOutcome(spec.id, "skipped", time.perf_counter() - t0, reason=str(e))
        except Exception as e:  # one model failing never stops the others
            policy = policy_of(e)
            kind = policy.kind
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, FeatxError):
                reason = f"{type(e).__name__}: {reason}"
            attempt, unrecorded = self.opts.attempt, None
            try:  # a store that cannot take the record (disk full, gone) must not stop the other models
                attempt = self.store.record_failure(key, FailureRecord(spec.id, reason, kind, attempt)).attempt
            except (FeatxError, OSError) as rec:
                unrecorded = str(rec).splitlines()[0] if str(rec) else type(rec).__name__
            self.log.event("failed", model=spec.id, reason=reason, kind=kind, attempt=attempt, retry=policy.retry,
                           failure_record_not_written=unrecorded)
            return ModelOutcome(spec.id, "failed", time.perf_counter() - t0, reason=reason, kind=kind)
        finally:
            loaded = None  # drop the model before collecting, so its memory is free for the next one
            free_memory()

    def _where(self, key: ArtifactKey, layout: ShardLayout | None, todo: list[int] | None) -> dict[str, str]:
        """Where a model's features go, for its log lines: its one file, or its shards' folder and layout."""
        if layout is None:
            return {"store": f"{self.store.url}/{key.data}"}
        start, end = layout.bounds(0)
        count = f"{len(todo)} of {layout.num_shards}" if todo is not None else f"{layout.num_shards}"
        return {"store": f"{self.store.url}/{key.model_stem}/{SHARD_PREFIX}NNNNN-of-{layout.num_shards:05d}.{key.fmt}",
                "shards": f"{count} shards of {end - start} rows"}

    def _extract(self, spec: ModelSpec, loaded: Loaded, rows: Rows, pool: str) -> Extraction:
        progress = Progress(self.log, spec.id, len(rows), run=self._display)
        try:
            result = extract_rows(spec, loaded, rows, pool, self.opts.extract, progress)
        finally:
            progress.close()
        if result.info.get("truncated_rows"):  # the manifest records it too
            self.log.event("truncated", model=spec.id, rows=result.info["truncated_rows"],
                           max_tokens=result.info["max_positions"])
        feats = result.feats
        if self.request.layers is not None:
            result.layer_indices = layer_indices(self.request.layers, len(feature_layers(feats)))
        if result.layer_indices or self.request.feature_dtype:
            result.tensors["feats"] = select(feats, result.layer_indices or None, self.request.feature_dtype)
        return result

    def _run_shards(self, spec: ModelSpec, key: ArtifactKey, loaded: Loaded, layout: ShardLayout,
                    todo: list[int], t0: float) -> ModelOutcome:
        """Extract and commit each missing shard of ``layout`` in turn, by the store's commit
        protocol: host memory holds one shard's features, and a stop loses only the shard under way."""
        # the model's features are never in two forms: its one file (another run's) goes first, manifest first
        self.store.delete(key.manifest)
        self.store.delete(key.data)
        self._sharded = layout
        rows_done = 0
        for index in todo:
            start, end = layout.bounds(index)
            shard_key = key.shard(index, layout.num_shards)
            result = self._extract(spec, loaded, self.rows.slice(start, end), key.pool)
            manifest = self._commit(spec, shard_key, loaded, result, self._shard_identity(spec, layout, index),
                                    end - start)
            rows_done += end - start
            self.log.event("committed", model=spec.id, shard=f"{index + 1}/{layout.num_shards}", rows=f"{start}-{end}",
                           where=f"{self.store.url}/{manifest.data_key}", sha256=manifest.sha256[:16])
        self.store.delete(key.failure)
        seconds = time.perf_counter() - t0
        where = f"{self.store.url}/{key.model_stem}/"
        return ModelOutcome(spec.id, "committed", seconds, rows_done / max(seconds, 1e-9),
                            where=f"{where} ({len(todo)} of {layout.num_shards} shards)")

    def _commit(self, spec: ModelSpec, key: ArtifactKey, loaded: Loaded, result: Extraction,
                identity: RunIdentity, num_rows: int) -> Manifest:
        feats = result.feats
        rows = {len(t) for t in feature_layers(feats)} if feats is not None else {0}
        if rows != {num_rows}:
            raise RuntimeError(f"internal: {spec.id} produced {sorted(rows)} rows, expected {num_rows}")
        identity = replace(identity, compute_dtype=loaded.dtype)
        try:
            tmp_dir = tempfile.TemporaryDirectory(prefix="featx-")
        except OSError as e:
            raise disk_full(e, f"a temporary directory in {tempfile.gettempdir()}") or e from None
        with tmp_dir as tmp:
            path = Path(tmp) / f"features.{key.fmt}"
            try:
                write_tensors(result.tensors, path, key.fmt)
            except OSError as e:
                raise disk_full(e, f"the temporary {path}") or e from None
            manifest = Manifest(
                **asdict(identity), modality=spec.modality,
                sha256=sha256_file(path), size=path.stat().st_size, shape=feats_shape(feats),
                layer_shapes=layer_shapes(feats), layer_indices=result.layer_indices, dtype=feats_dtype(feats), featx_version=__version__,
                dataset_revision=self.rows.revision, device=loaded.device,
                attn_implementation=loaded.attn_implementation, fallbacks=loaded.fallbacks, extraction=result.info)
            return self.store.commit(key, path, manifest)
