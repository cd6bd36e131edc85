"""``run.yaml`` (the chart's ConfigMap) as a typed object, and what follows from it without any
API call: the desired models, where each one's artifact lives in the store, its GPU sizing.

Nothing here imports torch or kubernetes; artifact keys come from ``featx.pipeline.keys``, the
same rule ``featx extract`` writes paths with.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from featx.catalog import ModelSpec, resolve
from featx.errors import UsageError
from featx.plan.sizing import GpuClass, load_classes
from featx.pipeline.identity import add_weight_options, run_identity
from featx.pipeline.keys import artifact_key, dataset_prefix
from featx.store.keys import ArtifactKey
from featx.store.records import RunIdentity


@dataclass(frozen=True)
class Desired:
    """One model the run wants committed: its spec, pool, artifact key and what its Job would
    produce (a committed file with another identity is stale: the model is redone)."""

    spec: ModelSpec
    pool: str
    key: ArtifactKey
    identity: RunIdentity = field(hash=False)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def stem(self) -> str:
        return self.key.stem


@dataclass(frozen=True)
class RunConfig:
    release: str
    namespace: str
    fullname: str
    app_version: str
    modelset: str | tuple[str, ...]
    modality: str
    pool: str | None
    dataset: str
    subset: str | None
    caption_idx: int
    num_samples: int | None
    batch_size: int | None
    qlora: bool
    store: str
    concurrency: int
    attempts: int
    interval_s: int
    kueue_queue: str
    extra_args: tuple[str, ...]
    classes: tuple[GpuClass, ...]
    job_template: dict[str, Any] = field(repr=False, hash=False, compare=False)
    raw: dict[str, Any] = field(repr=False, hash=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        try:
            modelset = d["modelset"]
            return cls(
                release=str(d["release"]), namespace=str(d.get("namespace") or "default"), fullname=str(d["fullname"]),
                app_version=str(d.get("appVersion") or ""),
                modelset=tuple(modelset) if isinstance(modelset, list) else str(modelset),
                modality=d.get("modality") or "all", pool=d.get("pool"), dataset=str(d["dataset"]),
                subset=d.get("subset"), caption_idx=int(d.get("captionIdx") or 0), num_samples=d.get("numSamples"),
                batch_size=int(d["batchSize"]) if d.get("batchSize") else None, qlora=bool(d.get("qlora")), store=str(d["store"]),
                concurrency=int(d["concurrency"]), attempts=int(d["attempts"]),
                interval_s=int(d.get("intervalSeconds") or 30), kueue_queue=str(d.get("kueueQueue") or ""),
                extra_args=tuple(str(a) for a in d.get("extraArgs") or ()),
                classes=load_classes(d["gpuClasses"]), job_template=d["jobTemplate"], raw=d)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"run config: missing or bad key {e}; render it from the chart "
                             "(helm template / featx render) rather than by hand") from e

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"run config {p} does not exist; it is the chart's ConfigMap (key run.yaml)")
        return cls.from_dict(yaml.safe_load(p.read_text()))

    @property
    def modelset_label(self) -> str:
        return self.modelset if isinstance(self.modelset, str) else "inline"

    def desired(self) -> list[Desired]:
        """The models of the run, in modelset order, each with its artifact key."""
        if isinstance(self.modelset, str):
            specs = resolve(self.modelset, None, self.modality)
        else:
            specs = resolve(None, list(self.modelset), self.modality)
        extra = _identity_args(self.extra_args)
        out = []
        for spec in specs:
            key = artifact_key(spec, self.dataset, self.subset, self.pool, self.caption_idx, extra.format)
            identity = run_identity(spec, self.dataset, self.subset, pool=self.pool, caption_idx=self.caption_idx,
                                    num_samples=self.num_samples, init=extra.init, seed=extra.seed,
                                    qlora=self.qlora or extra.qlora, fmt=extra.format)
            out.append(Desired(spec, key.pool, key, identity))
        return out

    @property
    def scan_prefix(self) -> str:
        return dataset_prefix(self.dataset, self.subset)


def _identity_args(extra_args: tuple[str, ...]) -> argparse.Namespace:
    """The ``featx extract`` options a Job gets only through ``job.extraArgs`` that change its
    file's bytes, parsed as extract parses them."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    add_weight_options(parser)
    try:
        return parser.parse_known_args(list(extra_args))[0]
    except argparse.ArgumentError as e:
        raise UsageError(f"job.extraArgs {list(extra_args)}: {e}; fix it in the chart's values") from e
