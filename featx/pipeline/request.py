"""One run request: the options that decide what a run produces, built once and asked everything.

``featx extract``, ``featx status`` and the controller build a ``RunRequest`` (from the flags, or
from the chart's run config plus ``job.extraArgs``) and ask it for a model's artifact key, its
identity and the run-level checks, so the three agree on what "done" means and the controller
refuses what the CLI refuses, with the same message, before it creates a Job. Per-model rules
(quantised or not, pool, caption index) are the model's spec's (``featx.catalog.spec``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Iterable, Mapping

from featx import settings
from featx.catalog.spec import POOL_CHOICES, ModelSpec
from featx.data.datasets import dataset_naming
from featx.errors import UsageError
from featx.flags import flag
from featx.pipeline.keys import artifact_key, dataset_prefix
from featx.pipeline.layers import FEATURE_DTYPES, parse_layers
from featx.pipeline.shards import ShardLayout, committed_shards, layout_for, parse_indices, shard_count
from featx.store.keys import FORMATS, ArtifactKey, shard_name
from featx.store.records import RunIdentity, StoredState

INITS = ("pretrained", "random")
#: The flags ``add_data_options`` defines, as attribute names: on a cluster they come from chart
#: values (``dataset``, ``subset``, ``pool``, ``captionIdx``, ``numSamples``), never ``job.extraArgs``.
DATA_OPTIONS = ("dataset", "subset", "caption_idx", "num_samples", "pool")
#: The flags ``add_shard_options`` defines: on a cluster the controller sets them (``sharding`` values).
SHARD_OPTIONS = ("shard_rows", "num_shards", "shard_index", "shard_indices", "completion_index")
_VALUE_OF = {"dataset": "dataset", "subset": "subset", "caption_idx": "captionIdx", "num_samples": "numSamples",
             "pool": "pool"}


_DATA_FLAGS: dict[str, dict[str, Any]] = {
    "dataset": dict(default=settings.DEFAULT_DATASET,
                    help="HF data set id (prh = minhuh/prh), featx-sample, or a local path (./dir, /dir, ~/dir)"),
    "subset": dict(default=None, help="HF revision of the data set (default wit_1024; a label for local data)"),
    "caption_idx": dict(type=int, default=0, help="which text of each row the language models read"),
    "num_samples": dict(type=int, default=None, help="use only the first N rows"),
    "pool": dict(choices=POOL_CHOICES, default=None, help="pooling (default: avg for language, cls for vision models)"),
}


def add_data_options(p: argparse.ArgumentParser | argparse._ActionsContainer,
                     names: tuple[str, ...] = DATA_OPTIONS) -> None:
    """Which rows, which text and which pooling: defined once for every command that names a run
    (``featx align`` reads files by name, so it takes data set, subset and caption index only)."""
    g = p.add_argument_group("data") if isinstance(p, argparse.ArgumentParser) else p
    for name in names:
        flag(g, name, **_DATA_FLAGS[name])


def add_weight_options(g: argparse._ActionsContainer) -> None:
    """The options besides the data that change a file's bytes: ``extract`` takes them, ``status``
    takes them to tell done from stale, and the controller reads them from ``job.extraArgs``."""
    flag(g, "qlora", action="store_true",
         help="load language models in 4-bit NF4 (bitsandbytes); vision models of the run load as usual")
    flag(g, "init", choices=INITS, default="pretrained", help="random: weights from the config with --seed")
    flag(g, "seed", type=int, default=0)
    add_format_option(g)
    add_selection_options(g)


def add_format_option(g: argparse._ActionsContainer) -> None:
    flag(g, "format", choices=FORMATS, default="pt", help="pt (the reference's dict) or safetensors")


def add_selection_options(g: argparse._ActionsContainer) -> None:
    """Fewer bytes where users choose (``featx.pipeline.layers``): part of a file's identity."""
    flag(g, "layers", default=None, help="layers to keep: 0,8,16,-1 | every:4 | last (default: all, as the reference)")
    flag(g, "feature_dtype", choices=FEATURE_DTYPES, default=None,
         help="dtype of the stored features (default: the model's compute dtype, as before)")


def add_shard_options(g: argparse._ActionsContainer) -> None:
    """How a model's rows are split into files (``featx.pipeline.shards``) and which shard a process runs."""
    flag(g, "shard_rows", type=int, default=None,
         help="rows per shard file (default: about 1 GiB of features per shard; small models stay one file)")
    flag(g, "num_shards", type=int, default=None, help="split each model's rows into this many shards")
    flag(g, "shard_index", type=int, default=None, help="run only this shard (0-based; needs --num_shards)")
    flag(g, "shard_indices", type=_indices_flag, default=None,
         help="run only these shards, e.g. 3,7,9 or 0-11,14 (needs --num_shards)")
    flag(g, "completion_index", type=int, default=None,
         help="run only the shard at this position of --shard_indices (an Indexed Job passes $(JOB_COMPLETION_INDEX))")


def _indices_flag(text: str) -> tuple[int, ...]:
    try:
        return parse_indices(text)
    except UsageError as e:  # argparse's own one-line error, with the flag's name
        raise argparse.ArgumentTypeError(str(e)) from None


def add_policy_options(g: argparse._ActionsContainer) -> None:
    """Options that allow a run without changing its bytes."""
    flag(g, "trust_remote_code", action="store_true",
         help="allow models whose modelset entry sets trust_remote_code: true to run their repository's code")


@dataclass(frozen=True)
class RunRequest:
    """What a run is asked to produce. Validated when built: a bad value is a one-line
    ``UsageError`` before any model, store or Job is touched."""

    dataset: str = settings.DEFAULT_DATASET  # as given: an HF id, an alias (prh), featx-sample or a path
    subset: str | None = None  # None: the data set's default
    pool: str | None = None  # None: each model's default pool
    caption_idx: int = 0
    num_samples: int | None = None
    init: str = "pretrained"
    seed: int = 0
    qlora: bool = False
    format: str = "pt"
    trust_remote_code: bool = False
    shard_rows: int | None = None  # None (and no num_shards): automatic, ``featx.pipeline.shards``
    num_shards: int | None = None
    shard_index: int | None = None  # None: every shard not yet committed
    shard_indices: tuple[int, ...] | None = None  # several shards (``--shard_index`` is one)
    completion_index: int | None = None  # which of ``shard_indices`` to run alone (an Indexed Job's pod)
    layers: str | None = None  # None: every layer; else ``featx.pipeline.layers`` syntax
    feature_dtype: str | None = None  # None: the model's compute dtype

    def __post_init__(self) -> None:
        self._check_shards()
        if self.layers is not None:
            parse_layers(self.layers)
        if self.feature_dtype is not None and self.feature_dtype not in FEATURE_DTYPES:
            raise UsageError(f"--feature_dtype {self.feature_dtype!r}: use one of {', '.join(FEATURE_DTYPES)}")
        if self.num_samples is not None and (not isinstance(self.num_samples, int) or self.num_samples < 1):
            raise UsageError(f"--num_samples {self.num_samples}: give a positive number of rows")
        if not isinstance(self.caption_idx, int) or self.caption_idx < 0:
            raise UsageError(f"--caption_idx {self.caption_idx}: give 0 or a positive text index")
        if self.init not in INITS:
            raise UsageError(f"--init {self.init!r}: use one of {', '.join(INITS)}")
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.pool is not None and self.pool not in POOL_CHOICES:
            raise UsageError(f"--pool {self.pool!r}: use one of {', '.join(POOL_CHOICES)}")
        self.naming  # a data set or subset that cannot name a store key is refused here

    def _check_shards(self) -> None:
        for name in ("shard_rows", "num_shards"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UsageError(f"--{name} {value}: give a positive number")
        if self.shard_rows is not None and self.num_shards is not None:
            raise UsageError("--shard_rows and --num_shards both set the shard layout: give one of them")
        if self.shard_index is not None:
            if self.num_shards is None:
                raise UsageError(f"--shard_index {self.shard_index} needs --num_shards (the layout it indexes)")
            if not isinstance(self.shard_index, int) or not 0 <= self.shard_index < self.num_shards:
                raise UsageError(f"--shard_index {self.shard_index}: give 0..{self.num_shards - 1} "
                                 f"for --num_shards {self.num_shards}")
        if self.shard_indices is not None:
            if self.num_shards is None or self.shard_index is not None:
                raise UsageError("--shard_indices needs --num_shards (the layout it indexes) and no --shard_index")
            outside = [i for i in self.shard_indices if not 0 <= i < self.num_shards]
            if outside or not self.shard_indices:
                raise UsageError(f"--shard_indices: shard {outside[0] if outside else '(none)'} is not one of "
                                 f"0..{self.num_shards - 1} for --num_shards {self.num_shards}")
        if self.completion_index is not None:
            count = len(self.shard_indices or ())
            if not count or not 0 <= self.completion_index < count:
                raise UsageError(f"--completion_index {self.completion_index}: give 0..{count - 1}, a position "
                                 "in --shard_indices" if count else "--completion_index needs --shard_indices")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunRequest":
        """From the parsed flags of ``extract``/``status`` (options a command lacks keep their default)."""
        names = [f for f in cls.__dataclass_fields__ if hasattr(args, f)]
        return cls(**{f: getattr(args, f) for f in names})

    @classmethod
    def from_run_config(cls, values: dict[str, Any], extra_args: Iterable[str] = ()) -> "RunRequest":
        """From the chart's run config (``dataset``, ``subset``, ``pool``, ``captionIdx``,
        ``numSamples``, ``qlora``) and the Job's ``job.extraArgs``, parsed as ``featx extract``
        parses them; a data option in ``extraArgs`` is refused (its chart value decides)."""
        extra = list(extra_args)
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
        add_data_options(parser)
        add_weight_options(parser)
        add_policy_options(parser)
        add_shard_options(parser)
        try:
            given, _ = parser.parse_known_args(extra)
            defaults, _ = parser.parse_known_args([])
        except argparse.ArgumentError as e:
            raise UsageError(f"job.extraArgs {extra}: {e}; fix it in the chart's values") from e
        clash = [n for n in DATA_OPTIONS if getattr(given, n) != getattr(defaults, n)]
        if clash:
            raise UsageError(f"job.extraArgs {extra} sets --{clash[0]}: set the chart value "
                             f"{_VALUE_OF[clash[0]]} instead (the controller names files from it)")
        sharded = [n for n in SHARD_OPTIONS if getattr(given, n) != getattr(defaults, n)]
        if sharded:
            raise UsageError(f"job.extraArgs {extra} sets --{sharded[0]}: set the chart value sharding.rowsPerShard "
                             "instead (the controller gives each Job its shards)")
        return cls(dataset=str(values["dataset"]), subset=values.get("subset"), pool=values.get("pool"),
                   caption_idx=int(values.get("captionIdx") or 0), num_samples=values.get("numSamples"),
                   init=given.init, seed=given.seed, qlora=bool(values.get("qlora")) or given.qlora,
                   format=given.format, trust_remote_code=given.trust_remote_code, layers=given.layers,
                   feature_dtype=given.feature_dtype)

    @cached_property
    def naming(self) -> tuple[str, str]:
        """(data set name, subset) as they appear in store keys; pure (no disk, no hub)."""
        return dataset_naming(self.dataset, self.subset)

    @property
    def scan_prefix(self) -> str:
        """The store prefix holding every artifact of this data set and subset (one listing)."""
        return dataset_prefix(self.dataset, self.subset)

    def key(self, spec: ModelSpec) -> ArtifactKey:
        """Where ``spec``'s features live (refuses a pool the model lacks)."""
        return artifact_key(spec, self.dataset, self.subset, self.pool, self.caption_idx, self.format)

    def identity(self, spec: ModelSpec, *, rows_fingerprint: str | None = None, num_rows: int | None = None,
                 compute_dtype: str | None = None, shard: tuple[int, ShardLayout] | None = None) -> RunIdentity:
        """What this run produces for ``spec`` (for ``shard`` = (index, layout): that row shard's
        file, whose ``rows_fingerprint`` and ``num_rows`` are the shard's); the keyword fields only
        where the data and device are known (``featx extract``), else None (not compared)."""
        key = self.key(spec)
        place: dict[str, Any] = {}
        if shard is not None:
            index, layout = shard
            key = key.shard(index, layout.num_shards)
            start, end = layout.bounds(index)
            place = dict(num_shards=layout.num_shards, row_start=start, row_end=end)
        random = spec.init == "random" or self.init == "random"
        return RunIdentity(model_id=spec.id, data_key=key.data, dataset=key.dataset, subset=key.subset,
                           num_samples=self.num_samples, rows_fingerprint=rows_fingerprint, num_rows=num_rows,
                           caption_idx=key.caption_idx, pool=key.pool, init="random" if random else "pretrained",
                           seed=self.seed if random else 0, qlora=spec.quantised(self.qlora),
                           compute_dtype=compute_dtype, model_revision=spec.revision, format=self.format,
                           layers=self.layers, feature_dtype=self.feature_dtype, **place)

    def wanted_shards(self, num_shards: int) -> list[int]:
        """The shards of a ``num_shards`` layout this process runs: ``--shard_index``, the
        ``--completion_index``-th of ``--shard_indices`` (one pod of an Indexed Job), every one of
        ``--shard_indices``, else all."""
        if self.shard_index is not None:
            return [self.shard_index]
        if self.shard_indices is not None:
            if self.completion_index is not None:
                return [self.shard_indices[self.completion_index]]
            return list(self.shard_indices)
        return list(range(num_shards))

    def layout(self, num_rows: int, bytes_per_row: int | None = None) -> ShardLayout | None:
        """The row-shard layout this request asks for over ``num_rows`` rows (``featx.pipeline.shards``)."""
        return layout_for(num_rows, self.shard_rows, self.num_shards, bytes_per_row)

    def check(self, specs: Iterable[ModelSpec]) -> None:
        """The run-level refusals, before any work: two models that would write one file, a model
        that needs ``--trust-remote-code`` without it, a pool a model lacks."""
        owners: dict[str, str] = {}
        for spec in specs:
            stem = self.key(spec).stem
            if owners.setdefault(stem, spec.id) != spec.id:
                raise UsageError(f"{owners[stem]} and {spec.id} would write the same file {stem}: extract them "
                                 "into separate --output_dir/--store locations")
            if spec.trust_remote_code and not self.trust_remote_code:
                raise UsageError(f"{spec.id} sets trust_remote_code (it would run code from its repository): "
                                 "pass --trust-remote-code to allow it, or remove the model")

    def notes(self, specs: Iterable[ModelSpec]) -> list[str]:
        """Lines a run says once before it starts: how it applies options that some models ignore."""
        specs = list(specs)
        unquantised = [s for s in specs if self.qlora and not s.quantised(True)]
        if unquantised:
            return [f"--qlora quantises language models only: {len(unquantised)} vision model(s) of this run "
                    "load unquantised, as the reference runs them"]
        return []


def judge_model(states: dict[str, StoredState], request: RunRequest, spec: ModelSpec) -> StoredState:
    """``spec``'s state for ``request`` from one scan, without the data (``featx status``)."""
    key = request.key(spec)
    return judge_stored(states, key.model_stem, request.identity(spec), request.num_shards)


def judge_stored(states: Mapping[str, StoredState], stem: str, wanted: RunIdentity,
                 num_shards: int | None = None) -> StoredState:
    """The model at ``stem`` as a run wanting ``wanted`` sees it (pure: ``featx status`` and the
    controller's ``decide``): its one file as ``judge`` sees it, else its row shards: ``done`` when
    every shard of their layout (``num_shards`` when asked) is done, else ``missing`` with
    ``shards`` = (committed, of)."""
    single = judge(states.get(stem), wanted)
    shards = committed_shards(states, stem)
    if single.state == "done" or not shards:
        return single
    judged = [(st, judge_shard(st, s, wanted)) for s, st in shards.items()]
    totals = {num_shards} if num_shards is not None else {n for s in shards if (n := shard_count(s))}
    total = max(totals, default=0)
    done = sum(j.state == "done" and st.manifest is not None and st.manifest.num_shards == total for st, j in judged)
    bad = next((j for _, j in judged if j.state in ("stale", "corrupt")), None)
    if done == total:
        return StoredState("done", reason=f"{total}/{total} shards", shards=(done, total))
    reason = f"{done}/{total} shards" + (f"; a shard is {bad.state}: {bad.reason}" if bad else "")
    return StoredState("missing", failure=single.failure, reason=reason, shards=(done, total))


def missing_shards(states: Mapping[str, StoredState], stem: str, wanted: RunIdentity,
                   num_shards: int) -> tuple[int, ...]:
    """The shards of a ``num_shards`` layout of the model at ``stem`` that are not done for
    ``wanted`` (pure: the controller's Indexed Job runs exactly these)."""
    stems = ((i, f"{stem}/{shard_name(i, num_shards)}") for i in range(num_shards))
    return tuple(i for i, s in stems if judge_shard(states.get(s), s, wanted).state != "done")


def judge_shard(state: StoredState | None, shard_stem: str, wanted: RunIdentity) -> StoredState:
    """One row shard's file as ``judge`` sees it for a run wanting the model ``wanted``."""
    return judge(state, replace(wanted, data_key=f"{shard_stem}.{wanted.format}"))


def judge(state: StoredState | None, wanted: RunIdentity) -> StoredState:
    """``state`` as this run sees it: a ``done`` manifest that claims another model or file is
    ``corrupt`` (copied or mis-synced; redone), one made with other inputs is ``stale``."""
    if state is None:
        return StoredState("missing")
    if state.state != "done" or state.manifest is None:
        return state
    manifest = state.manifest
    if manifest.model_id != wanted.model_id or manifest.stem != wanted.stem:
        return replace(state, state="corrupt",
                       reason=f"its manifest belongs to {manifest.model_id} ({manifest.data_key}), not to "
                              f"{wanted.model_id} ({wanted.data_key}): copied or mis-synced; extract redoes it")
    differences = wanted.differences(manifest.identity)
    if not differences:
        return state
    return replace(state, state="stale", reason="committed with other inputs: " + "; ".join(differences))
