"""Resolve a data set id (HF id, alias, local directory) to the rows a run extracts from.

Every model of a run sees the same rows in the same order; ``Rows.fingerprint`` hashes them so
that alignment can refuse features computed on different inputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from featx import settings
from featx.data.sample import SAMPLE_NAME, sample_path
from featx.errors import TransientError, UsageError

HUB_ALIASES = {"prh": "minhuh/prh"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


class ImageList:
    """Images addressed by row; picklable, so data-loader workers decode in parallel."""

    def __init__(self, dataset: Any = None, files: Sequence[Path] | None = None):
        self._dataset, self._files = dataset, list(files) if files is not None else None

    def __len__(self) -> int:
        return len(self._files) if self._files is not None else len(self._dataset)

    def raw(self, i: int) -> bytes:
        if self._files is not None:
            return self._files[i].read_bytes()
        item = self._dataset[i]["image"]
        return item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes()

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.open(io.BytesIO(self.raw(i))).convert("RGB")


@dataclass
class Rows:
    """The inputs of a run: dataset identity for file paths and manifests, texts and images."""

    name: str  # as it appears in output paths: "minhuh/prh" or a local base name
    subset: str
    revision: str | None
    texts: list[str]
    images: ImageList
    all_texts: list[list[str]] = field(repr=False, default_factory=list)
    source: str = ""  # the data set id as given (HF id, alias or path): what artifact keys are named from
    num_samples: int | None = None  # the rows asked for (None: all): part of a run's identity

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        """sha256 over every row's texts and image bytes, in order (independent of caption_idx)."""
        h = hashlib.sha256()
        for i, texts in enumerate(self.all_texts):
            h.update(json.dumps(texts, ensure_ascii=False).encode())
            h.update(hashlib.sha256(self.images.raw(i)).digest())
        return h.hexdigest()


def _as_list(text: Any) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def _pick(all_texts: list[list[str]], caption_idx: int, where: str) -> list[str]:
    width = min(len(t) for t in all_texts) if all_texts else 0
    if caption_idx < 0 or caption_idx >= width:
        raise UsageError(
            f"--caption_idx {caption_idx} is out of range: {where} has {width} text(s) per row; "
            f"use 0..{width - 1}"
        )
    return [t[caption_idx] for t in all_texts]


def _from_hf(ds: Any, name: str, subset: str, revision: str | None, caption_idx: int,
             num_samples: int | None, where: str) -> Rows:
    from datasets import Image

    missing = {"image", "text"} - set(ds.column_names)
    if missing:
        raise UsageError(f"{where} lacks column(s) {sorted(missing)}; it needs 'image' and 'text'")
    if num_samples is not None:
        ds = ds.select(range(min(num_samples, len(ds))))
    ds = ds.cast_column("image", Image(decode=False))
    all_texts = [_as_list(t) for t in ds["text"]]
    return Rows(name, subset, revision, _pick(all_texts, caption_idx, where), ImageList(dataset=ds), all_texts)


def _read_captions(folder: Path) -> list[tuple[str, list[str]]]:
    jsonl, tsv, csv_path = folder / "captions.jsonl", folder / "captions.tsv", folder / "captions.csv"
    if jsonl.exists():
        out = []
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    out.append((rec["file"], _as_list(rec["text"])))
                except (ValueError, KeyError) as e:
                    raise UsageError(f"{jsonl}:{n}: each line must be JSON with 'file' and 'text'") from e
        return out
    for path, delim in ((tsv, "\t"), (csv_path, ",")):
        if path.exists():
            with path.open(newline="") as f:
                return [(r[0], r[1:]) for r in csv.reader(f, delimiter=delim) if r]
    raise UsageError(
        f"{folder} is neither a save_to_disk data set nor an image folder with captions.jsonl "
        "(lines of {\"file\": ..., \"text\": ...}), captions.tsv or captions.csv"
    )


def _from_folder(folder: Path, name: str, subset: str, caption_idx: int, num_samples: int | None) -> Rows:
    entries = _read_captions(folder)
    if num_samples is not None:
        entries = entries[:num_samples]
    files = [folder / f for f, _ in entries]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise UsageError(f"{folder}: {len(absent)} image(s) named in the captions file do not exist, e.g. {absent[0]}")
    all_texts = [t for _, t in entries]
    return Rows(name, subset, None, _pick(all_texts, caption_idx, str(folder)), ImageList(files=files), all_texts)


def local_name(path: Path) -> str:
    """A local data set's name in paths: its folder's base name plus a short hash of its absolute
    path, so that two folders of the same name (``a/images``, ``b/images``) never share files."""
    resolved = path.resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def dataset_naming(dataset: str, subset: str | None) -> tuple[str, str]:
    """(name, subset) of a data set id as they appear in artifact paths: the HF id (``prh``
    resolved) with its revision, or a local directory's ``local_name`` with ``default``. Pure:
    the controller and ``featx status`` name a run's files without loading its data."""
    if not dataset:
        raise UsageError("--dataset is empty: give an HF id (minhuh/prh), prh, featx-sample or a local path")
    if dataset == SAMPLE_NAME:
        return SAMPLE_NAME, subset or "default"
    path = Path(dataset).expanduser()
    if path.exists() or dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        return local_name(path), subset or "default"
    return HUB_ALIASES.get(dataset, dataset), subset or settings.DEFAULT_SUBSET


def load_rows(dataset: str, subset: str | None = None, caption_idx: int = 0,
              num_samples: int | None = None) -> Rows:
    """Rows of ``dataset``: an HF id (``subset`` is its revision), ``prh``, ``featx-sample`` or a path."""
    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num_samples {num_samples}: give a positive number of rows")
    name, subset = dataset_naming(dataset, subset)
    path = sample_path() if dataset == SAMPLE_NAME else Path(dataset).expanduser()
    if path.exists():
        rows = _load_local(path, name, subset, caption_idx, num_samples)
    elif name != HUB_ALIASES.get(dataset, dataset):
        raise UsageError(f"data set path {dataset} does not exist; check the path")
    else:
        rows = _load_hub(name, subset, caption_idx, num_samples)
    return replace(rows, source=dataset, num_samples=num_samples)


def _load_local(path: Path, name: str, subset: str, caption_idx: int, num_samples: int | None) -> Rows:
    if not path.is_dir():
        raise UsageError(f"{path} is a file; pass a save_to_disk directory or an image folder with captions")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if "train" not in ds:
                raise UsageError(f"{path}: a DatasetDict needs a 'train' split; found {list(ds)}")
            ds = ds["train"]
        return _from_hf(ds, name, subset, None, caption_idx, num_samples, str(path))
    return _from_folder(path, name, subset, caption_idx, num_samples)


def _load_hub(repo: str, subset: str, caption_idx: int, num_samples: int | None) -> Rows:
    from datasets import load_dataset

    try:
        ds = load_dataset(repo, revision=subset, split="train")
    except Exception as e:  # datasets raises many types; classify by message, keep it one line
        text = f"{type(e).__name__}: {e}".lower()
        if any(s in text for s in ("connection", "offline", "resolve", "timed out", "network", "max retries")):
            raise TransientError(
                f"cannot reach the Hugging Face hub to load {repo} (revision {subset}); check the "
                "network or HF_ENDPOINT, or pass a local --dataset PATH (e.g. featx-sample)"
            ) from e
        raise UsageError(
            f"cannot load data set {repo} at revision {subset}: {str(e).splitlines()[0][:200]}; "
            "check --dataset and --subset"
        ) from e
    return _from_hf(ds, repo, subset, subset, caption_idx, num_samples, f"{repo}@{subset}")
