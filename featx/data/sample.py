"""A small offline image–caption data set, generated deterministically.

It stands in for ``minhuh/prh`` where no hub is reachable (quick start, ``smoke``, tests): a
folder of PNG images and a ``captions.jsonl`` whose captions describe what is drawn, with the
same three-text layout as WIT (caption, page description, section description) and a realistic
spread of caption lengths.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from featx import settings
from featx.errors import UsageError

SAMPLE_NAME = "featx-sample"
SAMPLE_ROWS = 64
_COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 170), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245)}
_SHAPES = ("circle", "square", "triangle", "stripe")
# The phrases captions are built from; public because the smoke models' tiny tokenizer trains on them.
PLACES = ("in a museum in Zürich", "on a café table", "next to a river", "in a quiet library",
          "under a bright afternoon sky", "at a train station in São Paulo")
FILLER = ("The photograph was taken in the late afternoon.", "It is part of a larger collection of "
          "geometric studies donated to the archive.", "Visitors often stop to look at it.",
          "The colours have faded slightly over the years.", "Nobody knows who painted it.")


def _draw(shape: str, fg: tuple[int, int, int], bg: tuple[int, int, int], rng: random.Random):
    from PIL import Image, ImageDraw

    size = 96
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    x0, y0 = rng.randint(4, 30), rng.randint(4, 30)
    x1, y1 = x0 + rng.randint(40, 60), y0 + rng.randint(40, 60)
    if shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=fg)
    elif shape == "square":
        d.rectangle((x0, y0, x1, y1), fill=fg)
    elif shape == "triangle":
        d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fg)
    else:
        for x in range(0, size, 16):
            d.rectangle((x, 0, x + 7, size), fill=fg)
    return img


def build_sample(path: Path, rows: int = SAMPLE_ROWS, seed: int = 0) -> Path:
    """Write the sample data set to ``path`` (images/ + captions.jsonl); same bytes every time."""
    rng = random.Random(seed)
    (path / "images").mkdir(parents=True, exist_ok=True)
    names = list(_COLORS)
    lines = []
    for i in range(rows):
        shape = _SHAPES[i % len(_SHAPES)]
        fg, bg = rng.sample(names, 2)
        img = _draw(shape, _COLORS[fg], _COLORS[bg], rng)
        fname = f"images/{i:04d}.png"
        img.save(path / fname, format="PNG")
        caption = f"a {fg} {shape} on a {bg} background"
        if i % 3 == 1:
            caption += f" {rng.choice(PLACES)}"
        if i % 5 == 4:
            caption += ". " + " ".join(rng.sample(FILLER, rng.randint(2, 4)))
        page = f"Geometric study no. {i}: {shape}s in {fg}"
        section = " ".join(rng.sample(FILLER, 3))
        lines.append(json.dumps({"file": fname, "text": [caption, page, section],
                                 "origin": f"featx-sample://{i}"}))
    (path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return path


def sample_path() -> Path:
    """The generated sample data set, built on first use under ``FEATX_HOME``."""
    path = settings.FEATX_HOME / "datasets" / SAMPLE_NAME
    if not (path / "captions.jsonl").exists():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            build_sample(tmp)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UsageError(f"{SAMPLE_NAME} is built under FEATX_HOME={settings.FEATX_HOME}, which is not writable "
                             f"({e.strerror}): set FEATX_HOME to a writable directory (in a container, mount a "
                             "volume at /cache)") from None
        try:
            tmp.rename(path)
        except OSError:  # another process finished first: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return path
