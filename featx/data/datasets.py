"""Resolve a data set id (HF id, alias, local directory) to the rows a run extracts from.

Every model of a run sees the same rows in the same order; ``Rows.fingerprint`` hashes them so
that alignment can refuse features computed on different inputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from featx import settings
from featx.data.sample import SAMPLE_NAME, sample_path
from featx.errors import PermanentError, TransientError, UsageError
from featx.keyparts import check_key_part

HUB_ALIASES = {"prh": "minhuh/prh"}
#: Hugging Face ``imagefolder`` metadata (``datasets.load_dataset("imagefolder")``): a ``file_name``
#: column and the row's text in the first of these columns that is present.
HF_METADATA = ("metadata.jsonl", "metadata.csv")
HF_TEXT_COLUMNS = ("text", "caption", "captions")


def _arrow_rows(dataset: Any) -> Any:
    """A ``datasets.Dataset``'s rows as one ``pyarrow.Table``: zero-copy slices of its memory map
    (read with ``to_pylist`` a slice at a time, never the whole data set as Python objects)."""
    return dataset.with_format("arrow")[:]


def _image_bytes(item: dict) -> bytes:
    """An ``Image(decode=False)`` cell's bytes: inline, else the file it names."""
    return item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes()


class ImageList:
    """Images addressed by row; picklable, so data-loader workers decode in parallel."""

    def __init__(self, dataset: Any = None, files: Sequence[Path] | None = None):
        self._dataset, self._files = dataset, list(files) if files is not None else None

    def __len__(self) -> int:
        return len(self._files) if self._files is not None else len(self._dataset)

    def slice(self, start: int, end: int) -> "ImageList":
        """Rows ``[start, end)``, still undecoded (Arrow's ``select`` maps the rows, copies nothing)."""
        if self._files is not None:
            return ImageList(files=self._files[start:end])
        return ImageList(dataset=self._dataset.select(range(start, end)))

    def raw(self, i: int) -> bytes:
        if self._files is not None:
            return self._files[i].read_bytes()
        return _image_bytes(self._dataset[i]["image"])

    def raws(self) -> list[bytes]:
        """Every row's undecoded bytes, in one read (a slice's: what fingerprints hash)."""
        if self._files is not None:
            return [f.read_bytes() for f in self._files]
        return [_image_bytes(item) for item in _arrow_rows(self._dataset).column("image").to_pylist()]

    def describe(self, i: int) -> str:
        """Row ``i`` for messages: its file when it has one."""
        path = self._files[i] if self._files is not None else (self._dataset[i]["image"] or {}).get("path")
        return f"row {i} ({path})" if path else f"row {i}"

    def __getitem__(self, i: int):
        """Row ``i`` decoded; a truncated or non-image file is a permanent error naming it (no
        retry can fix the data, and other models of the run are unaffected)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.raw(i))) as image:
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated, bad header
            detail = "not an image format PIL reads" if isinstance(e, Image.UnidentifiedImageError) else str(e)
            raise PermanentError(f"{self.describe(i)}: unreadable image ({detail}); replace or remove it "
                                 "from the data set") from None


class TextList:
    """Every row's texts (a list of strings each), addressed by row: read from Arrow's memory map
    a slice at a time (a save_to_disk or hub data set), or held (a captions file's, read whole)."""

    def __init__(self, dataset: Any = None, lists: list[list[str]] | None = None):
        self._dataset, self._lists = dataset, lists

    def __len__(self) -> int:
        return len(self._lists) if self._lists is not None else len(self._dataset)

    def slice(self, start: int, end: int) -> "TextList":
        if self._lists is not None:
            return TextList(lists=self._lists[start:end])
        return TextList(dataset=self._dataset.select(range(start, end)))

    def lists(self) -> list[list[str]]:
        """These rows' texts as Python lists (only these rows are read)."""
        if self._lists is not None:
            return self._lists
        return [_as_list(t) for t in _arrow_rows(self._dataset).column("text").to_pylist()]


#: Rows read at a time to fingerprint a data set: bounds its host memory whatever N is.
FINGERPRINT_ROWS = 4096


@dataclass
class Rows:
    """The inputs of a run: dataset identity for file paths and manifests, texts and images. Rows
    are read where they are used (a shard's when it is extracted), so N rows cost no N Python
    objects."""

    name: str  # as it appears in output paths: "minhuh/prh" or a local base name
    subset: str
    revision: str | None
    captions: TextList = field(repr=False)
    images: ImageList = field(repr=False)
    caption_idx: int = 0
    source: str = ""  # the data set id as given (HF id, alias or path): what artifact keys are named from
    num_samples: int | None = None  # the rows asked for (None: all): part of a run's identity

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def all_texts(self) -> list[list[str]]:
        """Every row's texts (all captions of each)."""
        return self.captions.lists()

    @property
    def texts(self) -> list[str]:
        """Each row's ``caption_idx``-th text: what a language model reads."""
        return [t[self.caption_idx] for t in self.all_texts]

    def slice(self, start: int, end: int) -> "Rows":
        """Rows ``[start, end)`` of these (a row shard), nothing read yet; its ``fingerprint`` is of
        those rows only."""
        return replace(self, captions=self.captions.slice(start, end), images=self.images.slice(start, end))

    @property
    def fingerprint(self) -> str:
        """sha256 over every row's texts and image bytes, in order (independent of caption_idx),
        read ``FINGERPRINT_ROWS`` at a time."""
        h = hashlib.sha256()
        for start in range(0, len(self), FINGERPRINT_ROWS):
            part = self.slice(start, min(start + FINGERPRINT_ROWS, len(self)))
            for texts, raw in zip(part.all_texts, part.images.raws(), strict=True):
                h.update(json.dumps(texts, ensure_ascii=False).encode())
                h.update(hashlib.sha256(raw).digest())
        return h.hexdigest()


def _as_list(text: Any) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def _check_caption_idx(width: int, caption_idx: int, where: str) -> None:
    """``caption_idx`` must name a text of every row (``width``: the fewest texts a row has)."""
    if caption_idx < 0 or caption_idx >= width:
        raise UsageError(
            f"--caption_idx {caption_idx} is out of range: {where} has {width} text(s) per row; "
            f"use 0..{width - 1}"
        )


def _empty(where: str) -> UsageError:
    return UsageError(f"{where} is empty: it has no rows; give a data set with image-caption rows")


def _text_width(ds: Any, where: str) -> int:
    """The fewest texts a row of ``ds`` has, from Arrow (one vectorised pass, no Python rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = _arrow_rows(ds).column("text")
    if column.null_count:
        raise UsageError(f"{where}: {column.null_count} row(s) have no text; fill or remove them")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return 1
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or \
            not (pa.types.is_string(column.type.value_type) or pa.types.is_large_string(column.type.value_type)):
        raise UsageError(f"{where}: column 'text' is {column.type}; it must hold a string or a list of strings")
    return pc.min(pc.list_value_length(column)).as_py()


def _take(num_samples: int, total: int, where: str) -> int:
    """``--num_samples`` rows, refused when the data set has fewer (a file must hold what was asked)."""
    if total and num_samples > total:
        raise UsageError(f"--num_samples {num_samples} exceeds the {total} rows of {where}; give at most "
                         f"{total}, or omit it to use every row")
    return num_samples


def _from_hf(ds: Any, name: str, subset: str, revision: str | None, caption_idx: int,
             num_samples: int | None, where: str) -> Rows:
    from datasets import Image

    missing = {"image", "text"} - set(ds.column_names)
    if missing:
        raise UsageError(f"{where} lacks column(s) {sorted(missing)}; it needs 'image' and 'text'")
    if num_samples is not None:
        ds = ds.select(range(_take(num_samples, len(ds), where)))
    ds = ds.cast_column("image", Image(decode=False))
    if not len(ds):
        raise _empty(where)
    _check_caption_idx(_text_width(ds, where), caption_idx, where)
    return Rows(name, subset, revision, TextList(dataset=ds), ImageList(dataset=ds), caption_idx)


@dataclass(frozen=True)
class Caption:
    """One line of a captions file: where it is (for messages), the image it names, its texts."""

    where: str  # "captions.jsonl:12"
    file: str
    texts: list[str]


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; undecodable bytes are refused naming the line they are on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text; save the captions file as UTF-8") from None


def _hf_text(record: dict, where: str) -> list[str]:
    """The texts of one metadata row: its first text column, a string or a list of strings."""
    column = next((c for c in HF_TEXT_COLUMNS if c in record), None)
    texts = _as_list(record[column]) if column and isinstance(record[column], (str, list)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise UsageError(f"{where}: needs a 'file_name' and a text column ({', '.join(HF_TEXT_COLUMNS)}) holding "
                         "a string or a list of strings, as datasets' imagefolder reads it")
    return texts


def _read_hf_metadata(path: Path) -> list[Caption]:
    """``metadata.jsonl`` (one JSON object a line) or ``metadata.csv`` (a header row), as
    ``datasets``' imagefolder reads them."""
    text = _read_text(path)
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise UsageError(f"{path}:{n}: each line must be a JSON object with 'file_name' and 'text'") from None
            records.append((f"{path}:{n}", rec))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records = [(f"{path}:{reader.line_num}", rec) for rec in reader]
    out = []
    for where, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
            raise UsageError(f"{where}: needs a 'file_name' column naming the image, as datasets' imagefolder reads it")
        out.append(Caption(where, rec["file_name"], _hf_text(rec, where)))
    return out


def _read_captions(folder: Path) -> list[Caption]:
    for name in HF_METADATA:
        if (folder / name).exists():
            return _read_hf_metadata(folder / name)
    jsonl, tsv, csv_path = folder / "captions.jsonl", folder / "captions.tsv", folder / "captions.csv"
    if jsonl.exists():
        out = []
        for n, line in enumerate(_read_text(jsonl).splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    out.append(Caption(f"{jsonl}:{n}", rec["file"], _as_list(rec["text"])))
                except (ValueError, KeyError, TypeError, RecursionError):  # also 5000-digit numbers, deep nesting
                    raise UsageError(f"{jsonl}:{n}: each line must be JSON with 'file' and 'text'") from None
        return out
    for path, delim in ((tsv, "\t"), (csv_path, ",")):
        if path.exists():
            reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delim)
            return [Caption(f"{path}:{reader.line_num}", r[0], r[1:]) for r in reader if r]
    raise UsageError(
        f"{folder} is neither a save_to_disk data set nor an image folder with metadata.jsonl/metadata.csv "
        "(columns file_name and text, as datasets' imagefolder) or captions.jsonl "
        "(lines of {\"file\": ..., \"text\": ...}), captions.tsv or captions.csv"
    )


def _from_folder(folder: Path, name: str, subset: str, caption_idx: int, num_samples: int | None) -> Rows:
    entries = _read_captions(folder)
    if num_samples is not None:
        entries = entries[:_take(num_samples, len(entries), str(folder))]
    files = [_inside(folder, c) for c in entries]
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise UsageError(f"{folder}: {len(absent)} image(s) named in the captions file do not exist, e.g. {absent[0]}")
    if not entries:
        raise _empty(str(folder))
    _check_caption_idx(min(len(c.texts) for c in entries), caption_idx, str(folder))
    return Rows(name, subset, None, TextList(lists=[c.texts for c in entries]), ImageList(files=files), caption_idx)


def local_name(path: Path) -> str:
    """A local data set's name in paths: its folder's base name plus a short hash of its absolute
    path, so that two folders of the same name (``a/images``, ``b/images``) never share files.
    From the path as written (no symlink resolved, nothing read), so a controller that cannot see
    the folder names it as the Job that reads it does."""
    absolute = Path(os.path.abspath(path.expanduser()))
    return f"{absolute.name}-{hashlib.sha256(str(absolute).encode()).hexdigest()[:8]}"


def is_local_path(dataset: str) -> bool:
    """A data set id written as a path (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id."""
    return dataset.startswith((".", "/", "~")) or dataset.count("/") > 1


def _inside(folder: Path, caption: Caption) -> Path:
    """The image a caption line names, refused unless it is a relative path inside ``folder``
    (checked on the names; a symbolic link placed in the folder is the owner's choice)."""
    name = caption.file
    if not isinstance(name, str) or not name or Path(name).is_absolute() or "\\" in name \
            or ".." in Path(name).parts:
        raise UsageError(f"{caption.where}: image {name!r} is not a relative path inside {folder}; "
                         "name images relative to the data set's folder, without '..'")
    return folder / name


def dataset_naming(dataset: str, subset: str | None) -> tuple[str, str]:
    """(name, subset) of a data set id as they appear in artifact paths: the HF id (``prh``
    resolved) with its revision, or a local directory's ``local_name`` with ``default``. Pure:
    the controller and ``featx status`` name a run's files without touching the disk."""
    if not dataset:
        raise UsageError("--dataset is empty: give an HF id (minhuh/prh), prh, featx-sample or a local path")
    if dataset == SAMPLE_NAME:
        name, subset = SAMPLE_NAME, subset or "default"
    elif is_local_path(dataset):
        name, subset = local_name(Path(dataset)), subset or "default"
    else:
        name, subset = HUB_ALIASES.get(dataset, dataset), subset or settings.DEFAULT_SUBSET
    return check_key_part(name, "--dataset name"), check_key_part(subset, "--subset")


def load_rows(dataset: str, subset: str | None = None, caption_idx: int = 0,
              num_samples: int | None = None) -> Rows:
    """Rows of ``dataset``: an HF id (``subset`` is its revision), ``prh``, ``featx-sample`` or a path."""
    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num_samples {num_samples}: give a positive number of rows")
    name, subset = dataset_naming(dataset, subset)
    path = sample_path() if dataset == SAMPLE_NAME else Path(dataset).expanduser()
    local = dataset == SAMPLE_NAME or is_local_path(dataset)
    if local and path.exists():
        rows = _load_local(path, name, subset, caption_idx, num_samples)
    elif local:
        raise UsageError(f"data set path {dataset} does not exist; check the path")
    elif path.exists():
        raise UsageError(f"--dataset {dataset} is read as a Hugging Face data set id; for the local folder "
                         f"of that name write it as a path: --dataset ./{dataset}")
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
