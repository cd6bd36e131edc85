"""Which GPU class (and how many devices) a model's Kubernetes Job asks for, and the batch plan
that fits it. Pure: catalog facts + ``featx.plan.memory`` estimates in, a ``Sizing`` out.

Rule: every enabled class is an *option* of one device, then (language models only, which load
with ``device_map="auto"``) of 2..maxPerNode devices. Options are tried in a fixed order — one
device (an enabled CPU class first, then GPUs by ascending memory), then several devices by
ascending total memory (fewer devices on a tie) — and the first whose per-device estimate fits
``MARGIN`` x its memory wins:

    per_device = weight_bytes / gpus + loss_chunk + runtime overhead + tokens x bytes_per_token

with at least ``MIN_TOKEN_BUDGET`` tokens of activations (``featx.plan.memory``). The token budget
handed to the container is the largest that fits on that option. An out-of-memory failure retries
on ``escalate(...)``: the next option in the same order with more total memory and no less memory
per device. Nothing here imports torch or kubernetes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import yaml

from featx.catalog.spec import ModelSpec
from featx.plan.batching import images_per_batch
from featx.plan.memory import (MAX_TOKEN_BUDGET, MIN_TOKEN_BUDGET, ModelShape, bytes_per_token, peak_bytes,
                               weight_bytes)

MiB = 1024**2
GiB = 1024**3
MARGIN = 0.9  # share of a device's memory the estimate may use (same as memory.token_budget)
DEFAULT_CLASSES_FILE = Path(__file__).with_name("gpu_classes.yaml")
# Facts a spec may lack (a model id the catalog does not know): a 7B-like shape.
FALLBACK_HIDDEN, FALLBACK_LAYERS, FALLBACK_VOCAB = 4096, 32, 32000
DEFAULT_IMAGE_TOKENS = 577  # 384 px / patch 16, plus CLS
_PATCH = re.compile(r"patch(\d+)")
_RES = re.compile(r"_(\d{3,4})(?=[._]|$)")
_DINOV2 = re.compile(r"dinov2")


@dataclass(frozen=True)
class GpuClass:
    """One kind of device a Job can ask for (see ``gpu_classes.yaml`` for each key's meaning)."""

    name: str
    memory_mib: int
    resource: str = "nvidia.com/gpu"
    max_per_node: int = 1
    memory_label: str = "nvidia.com/gpu.memory"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    enabled: bool = True
    container_memory_limit: str = ""  # e.g. "64Gi": nodes of bigger GPUs have more host memory

    @property
    def is_cpu(self) -> bool:
        return not self.resource

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MiB

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GpuClass":
        """From the camelCase form of values.yaml / gpu_classes.yaml."""
        return cls(name=str(d["name"]), memory_mib=int(d["memoryMiB"]), resource=d.get("resource", "nvidia.com/gpu") or "",
                   max_per_node=int(d.get("maxPerNode", 1)), memory_label=d.get("memoryLabel", "nvidia.com/gpu.memory") or "",
                   node_selector=dict(d.get("nodeSelector") or {}),
                   tolerations=tuple(dict(t) for t in d.get("tolerations") or ()), enabled=bool(d.get("enabled", True)),
                   container_memory_limit=str(d.get("containerMemoryLimit") or ""))


def load_classes(source: str | Path | Iterable[dict[str, Any]] | None = None) -> tuple[GpuClass, ...]:
    """Classes from a list of dicts (chart values), a YAML file with ``gpuClasses:``, or the defaults."""
    if source is None or isinstance(source, (str, Path)):
        doc = yaml.safe_load(Path(source or DEFAULT_CLASSES_FILE).read_text())
        source = doc["gpuClasses"]
    return tuple(GpuClass.from_dict(d) for d in source)


@dataclass(frozen=True)
class Sizing:
    """The choice for one model. ``gpu_class`` is None when no enabled class holds it."""

    gpu_class: GpuClass | None
    gpus: int
    dtype: str
    token_budget: int | None  # language: padded tokens per batch; vision: None
    batch_size: int | None  # vision: images per batch; language: the user's row cap, if any
    weight_bytes: int
    est_peak_bytes: int  # per device, at the chosen batch plan
    reason: str

    @property
    def fits(self) -> bool:
        return self.gpu_class is not None

    @property
    def class_name(self) -> str:
        return self.gpu_class.name if self.gpu_class else "-"

    @property
    def total_mib(self) -> int:
        return self.gpu_class.memory_mib * self.gpus if self.gpu_class else 0


def default_dtype(spec: ModelSpec, qlora: bool = False) -> str:
    """What the loader uses: bf16 for language models (nf4 weights with --qlora), fp32 for timm."""
    if spec.modality == "vision":
        return "float32"
    return "nf4" if spec.quantised(qlora) else "bfloat16"


def shape_of(spec: ModelSpec) -> ModelShape:
    hidden = spec.hidden or FALLBACK_HIDDEN
    layers = spec.layers or FALLBACK_LAYERS
    vocab = spec.vocab if spec.vocab is not None else (0 if spec.modality == "vision" else FALLBACK_VOCAB)
    return ModelShape(params=spec.params or 0, hidden=hidden, layers=layers, vocab=vocab,
                      intermediate=spec.intermediate or 0)


def image_tokens(spec: ModelSpec) -> int:
    """Tokens one image becomes in a ViT: (resolution / patch)^2 + 1, from the timm name
    (DINOv2 runs at 518 px; a name without a resolution at 224 px). Convnets and hierarchical
    models carry theirs in the catalog (their largest feature map in units of their final width:
    ``featx.extract.vision.image_tokens``)."""
    if spec.image_tokens:
        return spec.image_tokens
    name = spec.load_id
    patch = _PATCH.search(name)
    if not patch:
        return DEFAULT_IMAGE_TOKENS
    res = _RES.search(name)
    side = 518 if _DINOV2.search(name) else int(res.group(1)) if res else 224
    return (side // max(int(patch.group(1)), 1)) ** 2 + 1


@dataclass(frozen=True)
class _Option:
    cls: GpuClass
    gpus: int

    @property
    def total_mib(self) -> int:
        return self.cls.memory_mib * self.gpus

    def key(self) -> tuple:
        # one device first; an enabled CPU class (opt-in) before any GPU; then by memory
        return (self.gpus > 1, not self.cls.is_cpu, self.total_mib, self.gpus, self.cls.name)


def _options(spec: ModelSpec, classes: Iterable[GpuClass]) -> list[_Option]:
    opts = []
    for c in classes:
        if not c.enabled:
            continue
        most = c.max_per_node if (spec.modality == "language" and not c.is_cpu) else 1
        opts.extend(_Option(c, n) for n in range(1, max(most, 1) + 1))
    return sorted(opts, key=_Option.key)


def _fit(spec: ModelSpec, shape: ModelShape, dtype: str, opt: _Option, batch_size: int | None) -> Sizing | None:
    """The sizing on ``opt`` if the estimate fits, else None."""
    wbytes = weight_bytes(shape, dtype)
    fixed = peak_bytes(shape, dtype, 0) - wbytes + -(-wbytes // opt.gpus)  # weights split over devices
    room = int(opt.cls.memory_bytes * MARGIN) - fixed
    bpt = bytes_per_token(shape, dtype)
    name = f"{opt.gpus}x {opt.cls.name}" if opt.gpus > 1 else opt.cls.name
    if spec.modality == "vision":
        tokens = image_tokens(spec)
        per_image = tokens * bpt
        if room < per_image:
            return None
        batch = max(1, min(images_per_batch(MAX_TOKEN_BUDGET, tokens, batch_size), room // per_image))
        return Sizing(opt.cls, opt.gpus, dtype, None, batch, wbytes, fixed + batch * per_image,
                      f"{dtype} weights {wbytes / GiB:.2f} GiB + {batch} images/batch -> {name}")
    if room < MIN_TOKEN_BUDGET * bpt:
        return None
    budget = min(MAX_TOKEN_BUDGET, room // bpt)
    return Sizing(opt.cls, opt.gpus, dtype, budget, batch_size, wbytes, fixed + budget * bpt,
                  f"{dtype} weights {wbytes / GiB:.2f} GiB + {budget} tokens/batch -> {name}")


def choose(spec: ModelSpec, classes: Iterable[GpuClass], qlora: bool = False, dtype: str | None = None,
           batch_size: int | None = None) -> Sizing:
    """The smallest option that holds ``spec`` (one device if any class can, else several)."""
    return _first_fit(spec, _options(spec, classes), qlora, dtype, batch_size, "")


def escalate(spec: ModelSpec, classes: Iterable[GpuClass], failed_class: str, failed_gpus: int,
             qlora: bool = False, dtype: str | None = None, batch_size: int | None = None) -> Sizing:
    """After an out-of-memory failure on ``failed_gpus`` x ``failed_class``: the next option with
    more total memory and no less memory per device (a larger class, or more devices of it)."""
    classes = tuple(classes)
    by_name = {c.name: c for c in classes}
    failed = by_name.get(failed_class)
    if failed is None:  # the class is no longer configured: start from the normal choice
        return choose(spec, classes, qlora, dtype, batch_size)
    opts = [o for o in _options(spec, classes)
            if (failed.is_cpu and not o.cls.is_cpu)
            or (o.cls.memory_mib >= failed.memory_mib and o.total_mib > failed.memory_mib * failed_gpus)]
    note = f"out of memory on {failed_gpus}x {failed_class}; "
    return _first_fit(spec, opts, qlora, dtype, batch_size, note)


def _first_fit(spec: ModelSpec, opts: list[_Option], qlora: bool, dtype: str | None, batch_size: int | None,
               note: str) -> Sizing:
    dtype = dtype or default_dtype(spec, qlora)
    shape = shape_of(spec)
    for opt in opts:
        sizing = _fit(spec, shape, dtype, opt, batch_size)
        if sizing is not None:
            return replace(sizing, reason=note + sizing.reason)
    wbytes = weight_bytes(shape, dtype)
    hint = "" if qlora or spec.modality == "vision" else "; or use --qlora (4-bit weights)"
    return Sizing(None, 0, dtype, None, batch_size, wbytes, peak_bytes(shape, dtype, MIN_TOKEN_BUDGET),
                  f"{note}no enabled GPU class holds {dtype} weights of {wbytes / GiB:.1f} GiB; "
                  f"add a larger class to gpuClasses or raise its maxPerNode{hint}")


def size_on(spec: ModelSpec, classes: Iterable[GpuClass], class_name: str, gpus: int, qlora: bool = False,
            dtype: str | None = None, batch_size: int | None = None) -> Sizing:
    """The sizing on ``gpus`` x ``class_name`` (a retry stays where the last attempt ran); the
    normal choice when that class is gone or no longer holds the model."""
    classes = tuple(classes)
    cls = next((c for c in classes if c.name == class_name and c.enabled), None)
    if cls is not None and gpus >= 1:
        found = _first_fit(spec, [_Option(cls, gpus)], qlora, dtype, batch_size, "")
        if found.fits:
            return found
    return choose(spec, classes, qlora, dtype, batch_size)
