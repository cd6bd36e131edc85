"""The records a store keeps: the manifest (the only proof of "done") and the failure record."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from featx.clock import now_iso

State = Literal["done", "failed", "missing", "corrupt"]
R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    """A dataclass stored as JSON; unknown keys (from a newer featx) are ignored when read."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[R], data: bytes) -> R:
        raw = json.loads(data)
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass
class Manifest(JsonRecord):
    """Written last, only if absent; ``sha256``/``size`` describe the data object it commits."""

    model_id: str
    modality: str
    dataset: str
    subset: str
    rows_fingerprint: str
    num_rows: int
    pool: str
    caption_idx: int
    format: str
    data_key: str
    sha256: str
    size: int
    shape: list[int]  # [N, L, D]; [N, L] for the list form, whose layers are in ``layer_shapes``
    dtype: str
    featx_version: str
    model_revision: str | None = None
    dataset_revision: str | None = None
    etag: str | None = None  # the store's own fingerprint of the data object (listing-checkable)
    init: str = "pretrained"
    seed: int = 0
    qlora: bool = False
    device: str = "cpu"
    compute_dtype: str = "float32"
    attn_implementation: str | None = None
    fallbacks: list[str] = field(default_factory=list)
    extraction: dict[str, Any] = field(default_factory=dict)  # batch plan, timings, padding...
    layer_shapes: list[list[int]] = field(default_factory=list)  # [N, C_l] per layer; empty when stacked
    host: str = field(default_factory=socket.gethostname)
    created_at: str = field(default_factory=now_iso)


@dataclass
class FailureRecord(JsonRecord):
    """Why the last attempt at a model failed; cleared when the model commits."""

    model_id: str
    reason: str
    kind: Literal["permanent", "transient", "oom"]
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
