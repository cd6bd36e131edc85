"""``run.yaml`` (the chart's ConfigMap) as a typed object, and what follows from it without any
API call: the desired models, where each one's artifact lives in the store, its GPU sizing.

Nothing here imports torch or kubernetes; artifact keys come from ``featx.pipeline.keys``, the
same rule ``featx extract`` writes paths with.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from featx.catalog import ModelSpec, resolve
from featx.errors import UsageError
from featx.plan.sizing import GpuClass, load_classes
from featx.pipeline.request import RunRequest, judge_stored
from featx.pipeline.shards import ShardLayout, layout_for, stored_layout
from featx.store.keys import ArtifactKey
from featx.store.records import RunIdentity, StoredState
from featx.yamlfile import read_yaml


@dataclass(frozen=True)
class Desired:
    """One model the run wants committed: its spec, pool, artifact key and what its Job would
    produce (a committed file with another identity is stale: the model is redone)."""

    spec: ModelSpec
    pool: str
    key: ArtifactKey
    identity: RunIdentity = field(hash=False)
    #: its row shards when ``sharding.rowsPerShard`` is set and the row count is known: one Indexed
    #: Job runs the missing ones; None: one Job (that, with ``rowsPerShard``, runs every shard in turn)
    layout: ShardLayout | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def stem(self) -> str:
        return self.key.stem

    def in_store(self, committed: Mapping[str, StoredState]) -> "Desired":
        """This model with the shard layout its files take: the one the store already holds for it
        (its committed shards stay valid and one layout stays loadable, whatever ``rowsPerShard``
        says now), else the configured one."""
        if self.layout is None:
            return self
        held = stored_layout(committed, self.stem, self.layout.num_rows)
        return replace(self, layout=held) if held is not None and held != self.layout else self

    def judge(self, committed: Mapping[str, StoredState]) -> StoredState:
        """Its state in one store listing: its one file, or every shard of ``layout`` (of any
        layout the store holds when it is unknown); ask ``in_store``'s model."""
        return judge_stored(committed, self.stem, self.identity, self.layout.num_shards if self.layout else None)


#: The most completions (and failed indexes) the Job API allows an Indexed Job with backoffLimitPerIndex.
MAX_INDEXES = 100_000


@dataclass(frozen=True)
class Sharding:
    """Values ``sharding``: rows per shard file (None: off, one file per model as before) and how
    a sharded model's Indexed Job runs (``featx.kube.jobs``)."""

    rows_per_shard: int | None = None
    parallelism: int = 4
    backoff_limit_per_index: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Sharding":
        d = d or {}
        rows, limit = int(d.get("rowsPerShard") or 0), d.get("backoffLimitPerIndex")
        return cls(rows_per_shard=rows or None, parallelism=int(d.get("parallelism") or cls.parallelism),
                   backoff_limit_per_index=cls.backoff_limit_per_index if limit is None else int(limit))


@dataclass(frozen=True)
class RunConfig:
    release: str
    namespace: str
    fullname: str
    app_version: str
    modelset: str | tuple[str, ...]
    modality: str
    request: RunRequest  # what the run produces: the same object ``featx extract`` builds from its flags
    batch_size: int | None
    store: str
    concurrency: int
    attempts: int
    interval_s: int
    kueue_queue: str
    kueue_priority: str  # a WorkloadPriorityClass for the Jobs' Workloads ("" = Kueue's default)
    extra_args: tuple[str, ...]
    classes: tuple[GpuClass, ...]
    job_template: dict[str, Any] = field(repr=False, hash=False, compare=False)
    raw: dict[str, Any] = field(repr=False, hash=False, compare=False, default_factory=dict)
    verify: bool = False  # values `verify`: hash committed files before counting them done
    sharding: Sharding = Sharding()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        try:
            modelset = d["modelset"]
            extra_args = tuple(str(a) for a in d.get("extraArgs") or ())
            return cls(
                release=str(d["release"]), namespace=str(d.get("namespace") or "default"), fullname=str(d["fullname"]),
                app_version=str(d.get("appVersion") or ""),
                modelset=tuple(modelset) if isinstance(modelset, list) else str(modelset),
                modality=d.get("modality") or "all", request=RunRequest.from_run_config(d, extra_args),
                batch_size=int(d["batchSize"]) if d.get("batchSize") else None, store=str(d["store"]),
                concurrency=int(d["concurrency"]), attempts=int(d["attempts"]),
                interval_s=int(d.get("intervalSeconds") or 30), kueue_queue=str(d.get("kueueQueue") or ""),
                kueue_priority=str(d.get("kueuePriorityClass") or ""),
                extra_args=extra_args, classes=load_classes(d["gpuClasses"]), job_template=d["jobTemplate"], raw=d,
                verify=bool(d.get("verify")), sharding=Sharding.from_dict(d.get("sharding")))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"run config: missing or bad key {e}; render it from the chart "
                             "(helm template / featx render) rather than by hand") from e

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"run config {p} does not exist; it is the chart's ConfigMap (key run.yaml)")
        return cls.from_dict(read_yaml(p))

    @property
    def modelset_label(self) -> str:
        return self.modelset if isinstance(self.modelset, str) else "inline"

    def desired(self, num_rows: int | None = None) -> list[Desired]:
        """The models of the run, in modelset order, each with its artifact key (and, sharded over
        ``num_rows`` rows, its shard layout); refused as ``featx extract`` refuses them (two models
        on one file, trust_remote_code not allowed, more shards than an Indexed Job holds)."""
        if isinstance(self.modelset, str):
            specs = resolve(self.modelset, None, self.modality)
        else:
            specs = resolve(None, list(self.modelset), self.modality)
        self.request.check(specs)
        layout = self.layout(num_rows)
        out = []
        for spec in specs:
            key = self.request.key(spec)
            out.append(Desired(spec, key.pool, key, self.request.identity(spec), layout))
        return out

    def layout(self, num_rows: int | None) -> ShardLayout | None:
        """Each model's row shards over ``num_rows`` rows (None: not sharded, or the count unknown)."""
        if self.sharding.rows_per_shard is None or num_rows is None:
            return None
        layout = layout_for(num_rows, self.sharding.rows_per_shard, None)
        if layout is not None and layout.num_shards > MAX_INDEXES:
            raise UsageError(f"sharding.rowsPerShard {self.sharding.rows_per_shard} makes {layout.num_shards} shards of "
                             f"{num_rows} rows; an Indexed Job holds at most {MAX_INDEXES}: raise rowsPerShard")
        return layout

    @property
    def scan_prefix(self) -> str:
        return self.request.scan_prefix
