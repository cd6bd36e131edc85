"""The records a store keeps: the manifest (the only proof of "done") and the failure record."""

from __future__ import annotations

import json
import socket
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from featx.clock import now_iso
from featx.errors import FailureKind

State = Literal["done", "stale", "failed", "missing", "corrupt"]
R = TypeVar("R", bound="JsonRecord")


#: Largest record featx reads (its manifests are a few KiB): a bigger object is not one of them.
MAX_RECORD_BYTES = 1 << 20
_MAX_INT = 1 << 63  # sizes, shapes, attempts: anything beyond is no number featx wrote
_MAX_REASON = 200


class RecordError(ValueError):
    """Bytes under a record's name that are not such a record: the store shows them ``corrupt``
    with this reason (one short line), never a traceback."""


def _conforms(value: Any, tp: Any) -> bool:
    """Whether JSON ``value`` has type ``tp`` (the annotations records use)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(v, args[1]) for v in value.values())
    if tp is type(None):
        return value is None
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT < value < _MAX_INT
    return isinstance(value, tp)


class JsonRecord:
    """A dataclass stored as JSON; unknown keys (from a newer featx) are ignored when read."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[R], data: bytes) -> R:
        """The record ``data`` holds, checked field by field; ``RecordError`` says what is wrong."""
        if len(data) > MAX_RECORD_BYTES:
            raise RecordError(f"{len(data)} bytes, more than any {cls.__name__} featx writes")
        if not data.strip():
            raise RecordError("empty")
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, a 5000-digit number, deep nesting
            raise RecordError(f"not JSON ({_short(str(e) or type(e).__name__, 60)})") from None
        if not isinstance(raw, dict):
            raise RecordError(f"a JSON {type(raw).__name__}, not a {cls.__name__} object")
        hints, wanted = get_type_hints(cls), {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        missing = [n for n, f in wanted.items()
                   if n not in raw and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise RecordError(f"no {', '.join(missing)}: not a {cls.__name__} featx wrote")
        for name in wanted.keys() & raw.keys():
            if not _conforms(raw[name], hints[name]):
                tp = hints[name]
                raise RecordError(f"{name} is {_short(json.dumps(raw[name]), 60)}, not "
                                  f"{getattr(tp, '__name__', str(tp).replace('typing.', ''))}")
        return cls(**{k: v for k, v in raw.items() if k in wanted})


def _short(text: str, limit: int = _MAX_REASON) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


#: Identity fields only ``featx extract`` knows (it loads the data and picks the device).
UNKNOWABLE = ("rows_fingerprint", "num_rows", "compute_dtype", "num_shards", "row_start", "row_end")
#: Fields that bind a manifest to its place: a mismatch makes it ``corrupt``, not ``stale``.
BINDING = ("model_id", "data_key")


@dataclass(kw_only=True)
class RunIdentity:
    """Everything that determines a feature file's bytes: a committed file is "done" for a run only
    when the run's identity matches the one its manifest records. Fields set to None in a *wanted*
    identity (``rows_fingerprint``, ``num_rows``, ``compute_dtype``) are ones the asker cannot know
    without loading the data or the device (``featx status``, the controller): they are not compared."""

    model_id: str  # the model and the file the bytes belong to: a manifest copied to another
    data_key: str  # model's name, or synced under another key, is found out (``corrupt``)
    dataset: str  # the data set's name in paths (HF id, or a local folder's name + path hash)
    subset: str  # HF revision, or a local data set's label
    num_samples: int | None = None  # rows asked for (None: all)
    rows_fingerprint: str | None = None
    num_rows: int | None = None
    caption_idx: int = 0
    pool: str
    init: str = "pretrained"
    seed: int = 0  # 0 unless init is random: pretrained weights do not depend on it
    qlora: bool = False
    compute_dtype: str | None = None
    model_revision: str | None = None
    format: str = "pt"
    # a row shard's place (None: the model's one file): rows [row_start, row_end) of the data set;
    # ``rows_fingerprint`` and ``num_rows`` are then the shard's
    num_shards: int | None = None
    row_start: int | None = None
    row_end: int | None = None
    layers: str | None = None  # --layers as given (None: every layer); the indices are the manifest's
    feature_dtype: str | None = None  # --feature_dtype (None: the compute dtype)

    @property
    def stem(self) -> str:
        """The artifact stem the data key belongs to (the key without its format's suffix)."""
        return self.data_key.removesuffix(f".{self.format}")

    def differences(self, committed: RunIdentity) -> list[str]:
        """``field: committed -> wanted`` for every field this identity fixes that ``committed`` differs in."""
        out = []
        for f in fields(RunIdentity):
            if f.name in BINDING:
                continue
            want, have = getattr(self, f.name), getattr(committed, f.name)
            if want != have and not (want is None and f.name in UNKNOWABLE):
                out.append(f"{f.name}: {_show(have)} -> {_show(want)}")
        return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return value[:12] if isinstance(value, str) and len(value) == 64 else str(value)  # sha256: short


@dataclass(kw_only=True)
class Manifest(RunIdentity, JsonRecord):
    """Written last, only if absent; ``sha256``/``size`` describe the data object it commits; the
    ``RunIdentity`` fields say what produced it."""

    modality: str
    sha256: str
    size: int
    shape: list[int]  # [N, L, D]; [N, L] for the list form, whose layers are in ``layer_shapes``
    dtype: str
    featx_version: str
    dataset_revision: str | None = None
    etag: str | None = None  # the store's own fingerprint of the data object (listing-checkable)
    device: str = "cpu"
    attn_implementation: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    extraction: dict[str, Any] = field(default_factory=dict)  # batch plan, timings, padding...
    layer_shapes: list[list[int]] = field(default_factory=list)  # [N, C_l] per layer; empty when stacked
    layer_indices: list[int] = field(default_factory=list)  # the model's layers the file holds; empty: all
    host: str = field(default_factory=socket.gethostname)
    created_at: str = field(default_factory=now_iso)

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(**{f.name: getattr(self, f.name) for f in fields(RunIdentity)})


@dataclass
class FailureRecord(JsonRecord):
    """Why the last attempt at a model failed; cleared when the model commits."""

    model_id: str
    reason: str
    kind: FailureKind
    attempt: int = 1
    host: str = field(default_factory=socket.gethostname)
    time: str = field(default_factory=now_iso)


@dataclass
class StoredState:
    """What the store says about one artifact stem (from one listing)."""

    state: State
    manifest: Manifest | None = None
    failure: FailureRecord | None = None
    reason: str = ""
    shards: tuple[int, int] | None = None  # (committed, of) for a model stored in row shards
