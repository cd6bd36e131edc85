"""Image folders in the Hugging Face convention (``metadata.jsonl``/``metadata.csv`` with a
``file_name`` column), read as ``datasets``' own imagefolder reads them, beside featx's
``captions.*`` files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import featx
from featx.data import load_rows
from tests.helpers import run_cli

TEXTS = ["a red square", "two blue circles", "a green line on white"]


def folder_with(tmp_path: Path, fmt: str, lists: bool = False) -> Path:
    from PIL import Image

    data = tmp_path / "imgs"
    (data / "sub").mkdir(parents=True)
    names = ["b.png", "a.png", "sub/c.png"]  # metadata order is not file order
    for i, name in enumerate(names):
        Image.new("RGB", (20, 20), (80 * i, 40, 200 - 60 * i)).save(data / name)
    rows = [{"file_name": n, "text": [t, f"page {i}"] if lists else t} for i, (n, t) in enumerate(zip(names, TEXTS))]
    if fmt == "jsonl":
        (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with (data / "metadata.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["file_name", "text"])
            w.writeheader()
            w.writerows(rows)
    return data


@pytest.mark.parametrize("fmt, lists", [("jsonl", False), ("jsonl", True), ("csv", False)])
def test_featx_reads_what_datasets_imagefolder_reads(tmp_path, fmt, lists):
    from datasets import load_dataset

    data = folder_with(tmp_path, fmt, lists)
    rows = load_rows(str(data))
    reference = load_dataset("imagefolder", data_dir=str(data), split="train")  # the library's own reader
    ours = {(Path(f).name, tuple(t)) for f, t in zip((rows.images.describe(i) for i in range(len(rows))), rows.all_texts)}
    theirs = {(Path(im.filename).name, tuple(t if isinstance(t, list) else [t]))
              for im, t in zip(reference["image"], reference["text"])}
    assert {(n.split("(")[-1].rstrip(")"), t) for n, t in ours} == theirs
    assert rows.texts == TEXTS  # featx keeps the metadata's order: the rows' order in every feature file
    for i in range(len(rows)):  # the same pixels as datasets decodes for that file
        name = Path(rows.images.describe(i).split("(")[-1].rstrip(")")).name
        j = next(k for k, im in enumerate(reference["image"]) if Path(im.filename).name == name)
        assert rows.images[i].tobytes() == reference[j]["image"].convert("RGB").tobytes()


def test_a_metadata_folder_extracts(tmp_path):
    data = folder_with(tmp_path, "jsonl")
    out = tmp_path / "out"
    r = run_cli("extract", "--models", "featx-smoke/gpt2", "featx-smoke/vit", "--dataset", str(data),
                "--output_dir", str(out), "--num_workers", "0")
    assert r.code == 0 and r.out.count("committed") == 2, r.err[-2000:]
    assert featx.load("featx-smoke/vit", str(out), dataset=str(data)).feats.shape[0] == 3
    assert featx.load("featx-smoke/gpt2", str(out), dataset=str(data)).manifest.num_rows == 3
