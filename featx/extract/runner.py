"""Run extraction for many models into one store: skip what is done, keep going past failures,
commit each model whole or not at all, and summarise. A Kubernetes Job runs this for one model."""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from featx import __version__, settings
from featx.catalog.spec import ModelSpec
from featx.data.datasets import Rows
from featx.errors import (EXIT_FAILED, EXIT_OK, EXIT_OOM, EXIT_PERMANENT, FeatxError, OutOfMemoryError,
                          PermanentError, UsageError)
from featx.extract.loading import Loaded, load_language, load_vision, pick_device
from featx.logs import EventLog, Progress
from featx.plan.batching import images_per_batch
from featx.plan.memory import ModelShape, estimate_dtype, token_budget
from featx.pipeline.keys import artifact_key, dataset_prefix
from featx.store import ArtifactKey, FailureRecord, Manifest, Store, sha256_file
from featx.store.formats import write_tensors

# On CPU ~1k tokens per batch is about as fast as 8k (within +-13% either way over two benchmark
# runs) and needs 25-50% less memory (bench/README.md).
CPU_TOKEN_BUDGET = 1024


@dataclass
class ExtractOptions:
    pool: str | None = None  # None: avg for language, cls for vision (as the reference runs them)
    batch_size: int | None = None  # None: as many rows as the token budget allows
    token_budget: int | None = None  # None: from free accelerator memory (CPU: CPU_TOKEN_BUDGET)
    force_remake: bool = False
    qlora: bool = False
    init: str = "pretrained"
    seed: int = 0
    fmt: str = "pt"
    device: str | None = None
    num_workers: int = settings.NUM_WORKERS
    attempt: int = 1
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

    @property
    def exit_code(self) -> int:
        kinds = {o.kind for o in self.outcomes if o.status == "failed"}
        if not kinds:
            return EXIT_OK
        if "transient" in kinds:
            return EXIT_FAILED
        return EXIT_OOM if "oom" in kinds else EXIT_PERMANENT

    def table(self) -> str:
        rows = [("model", "status", "seconds", "rows/s", "detail")]
        for o in self.outcomes:
            rows.append((o.model, o.status, f"{o.seconds:.1f}", f"{o.rows_per_s:.1f}" if o.rows_per_s else "-",
                         o.reason or o.where))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    return "permanent" if isinstance(exc, (PermanentError, UsageError)) else "transient"


def _release(loaded: Loaded | None) -> None:
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _token_budget(loaded: Loaded, opts: ExtractOptions, shape: ModelShape) -> int:
    """Padded tokens per batch: the user's, or what the estimator fits into free GPU memory
    (``shape`` without parameters: the weights are already resident)."""
    if opts.token_budget:
        return opts.token_budget
    if not loaded.device.startswith("cuda"):
        return CPU_TOKEN_BUDGET
    free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
    return max(token_budget(shape, estimate_dtype(loaded.dtype), free), 256)


def language_budget(loaded: Loaded, opts: ExtractOptions) -> int:
    return _token_budget(loaded, opts, ModelShape.from_config(loaded.model.config))


def vision_batch_size(loaded: Loaded, opts: ExtractOptions) -> int:
    """Images per batch: the user's, or as many as the token budget holds."""
    from featx.extract.vision import image_tokens

    model = loaded.model
    budget = _token_budget(loaded, opts, ModelShape(0, model.num_features, len(getattr(model, "blocks", ()))))
    return images_per_batch(budget, image_tokens(model), opts.batch_size)


class Runner:
    def __init__(self, store: Store, rows: Rows, opts: ExtractOptions, caption_idx: int = 0,
                 log: EventLog | None = None):
        self.store, self.rows, self.opts, self.caption_idx = store, rows, opts, caption_idx
        self.log = log or EventLog()
        self.device = pick_device(opts.device)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.rows.fingerprint
        return self._fingerprint

    def run(self, specs: list[ModelSpec]) -> RunSummary:
        for spec in specs:  # refuse bad pools before any work
            spec.pool_for(self.opts.pool)
        summary = RunSummary()
        states = self.store.scan(dataset_prefix(self.rows.source, self.rows.subset))
        for spec in specs:
            key = artifact_key(spec, self.rows.source, self.rows.subset, self.opts.pool, self.caption_idx, self.opts.fmt)
            state = states.get(key.stem)
            if state and state.state == "done" and not self.opts.force_remake:
                self.log.event("skipped", model=spec.id, reason="already committed", where=f"{self.store.url}/{key.data}")
                summary.outcomes.append(ModelOutcome(spec.id, "skipped", reason="done"))
                continue
            if state and state.state == "corrupt":
                self.log.event("redo", model=spec.id, reason=state.reason)
            summary.outcomes.append(self.run_one(spec, key))
        return summary

    def run_one(self, spec: ModelSpec, key: ArtifactKey) -> ModelOutcome:
        t0 = time.perf_counter()
        self.log.event("start", model=spec.id, attempt=self.opts.attempt, gpu_class=self.opts.gpu_class or self.device,
                       batch_plan={"batch_size": self.opts.batch_size or "auto", "token_budget": self.opts.token_budget or "auto"},
                       dataset=f"{self.rows.name}@{self.rows.revision or self.rows.subset}", rows=len(self.rows),
                       pool=key.pool, store=f"{self.store.url}/{key.data}")
        loaded = None
        try:
            loaded = self._load(spec)
            progress = Progress(self.log, spec.id, len(self.rows))
            try:
                result = self._extract(spec, loaded, key.pool, progress)
            finally:
                progress.close()
            manifest = self._commit(spec, key, loaded, result)
            seconds = time.perf_counter() - t0
            where = f"{self.store.url}/{manifest.data_key}"
            self.log.event("committed", model=spec.id, where=where, seconds=round(seconds, 2),
                           shape=manifest.shape, sha256=manifest.sha256[:16])
            return ModelOutcome(spec.id, "committed", seconds, len(self.rows) / max(seconds, 1e-9), where=where)
        except Exception as e:  # one model failing never stops the others
            kind = _failure_kind(e)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, FeatxError):
                reason = f"{type(e).__name__}: {reason}"
            record = self.store.record_failure(key, FailureRecord(spec.id, reason, kind, self.opts.attempt))
            retry = "no (permanent)" if kind == "permanent" else ("on a larger GPU" if kind == "oom" else "yes")
            self.log.event("failed", model=spec.id, reason=reason, kind=kind, attempt=record.attempt, retry=retry)
            return ModelOutcome(spec.id, "failed", time.perf_counter() - t0, reason=reason, kind=kind)
        finally:
            _release(loaded)

    def _load(self, spec: ModelSpec) -> Loaded:
        if spec.modality == "language":
            return load_language(spec, self.opts.init, self.device, self.opts.qlora, self.opts.seed)
        if self.opts.qlora:
            raise UsageError(f"--qlora applies to language models only; run {spec.id} without it")
        return load_vision(spec, self.opts.init, self.device, self.opts.seed)

    def _extract(self, spec: ModelSpec, loaded: Loaded, pool: str, progress: Progress):
        if spec.modality == "language":
            from featx.extract.language import LanguageExtractor

            return LanguageExtractor(loaded, pool).extract(self.rows.texts, self.opts.batch_size,
                                                           language_budget(loaded, self.opts), progress)
        from featx.extract.vision import VisionExtractor

        return VisionExtractor(loaded, pool, spec.id).extract(self.rows.images, vision_batch_size(loaded, self.opts),
                                                              self.opts.num_workers, progress)

    def _commit(self, spec: ModelSpec, key: ArtifactKey, loaded: Loaded, result) -> Manifest:
        feats = result.feats
        if feats is None or feats.shape[0] != len(self.rows):
            raise RuntimeError(f"internal: {spec.id} produced {0 if feats is None else feats.shape[0]} rows, expected {len(self.rows)}")
        with tempfile.TemporaryDirectory(prefix="featx-") as tmp:
            path = Path(tmp) / f"features.{self.opts.fmt}"
            write_tensors(result.tensors, path, self.opts.fmt)
            manifest = Manifest(
                model_id=spec.id, modality=spec.modality, dataset=self.rows.name, subset=self.rows.subset,
                rows_fingerprint=self.fingerprint, num_rows=len(self.rows), pool=key.pool,
                caption_idx=key.caption_idx, format=self.opts.fmt,
                data_key=key.data, sha256=sha256_file(path), size=path.stat().st_size, shape=list(feats.shape),
                dtype=str(feats.dtype).removeprefix("torch."), featx_version=__version__,
                model_revision=loaded.revision, dataset_revision=self.rows.revision,
                init="random" if (spec.init == "random" or self.opts.init == "random") else "pretrained",
                seed=self.opts.seed, qlora=self.opts.qlora, device=loaded.device, compute_dtype=loaded.dtype,
                attn_implementation=loaded.attn_implementation, fallbacks=loaded.fallbacks, extraction=result.info)
            return self.store.commit(key, path, manifest)
