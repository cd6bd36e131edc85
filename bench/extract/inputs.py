"""Benchmark inputs: caption-length distributions, texts of exactly those token lengths, images.

featx's gain over the reference is mostly the padding the reference wastes (every batch as long as
the data set's longest text), and that depends on the length distribution, so the distribution is
a named, recorded input (``LengthDist``) and the benchmark runs several. No real caption corpus
ships in a package available here (checked: ``eccv-caption`` ships COCO ids only, nltk's data is
not on PyPI), so WIT's lengths are an assumption: log-normal, mean ~50 tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LengthDist:
    """Token lengths (special tokens included): ``mean`` for every text when ``sigma`` is 0,
    else log-normal with that mean before clipping to ``[lo, hi]``."""

    name: str
    mean: float
    sigma: float = 0.0
    lo: int = 5
    hi: int = 240
    note: str = ""

    def sample(self, n: int, seed: int = 0) -> list[int]:
        if self.sigma == 0:
            return [int(self.mean)] * n
        g = torch.Generator().manual_seed(seed)
        mu = math.log(self.mean) - self.sigma**2 / 2
        x = torch.exp(torch.randn(n, generator=g) * self.sigma + mu)
        return [int(v) for v in x.round().clamp(self.lo, self.hi)]

    def describe(self) -> dict[str, Any]:
        return asdict(self)


WIT_LIKE = LengthDist("wit-like", 50, 0.8, 5, 240, "the assumed WIT-like log-normal: mean 50 (median ~36), cap 240")
# The sensitivity table: from nothing to gain by avoiding padding to a long tail.
DISTRIBUTIONS = (
    LengthDist("equal-16", 16, note="every caption 16 tokens: no padding on either side"),
    LengthDist("wit-like-cap120", 50, 0.8, 5, 120, "WIT-like, longest caption cut to 120 tokens"),
    WIT_LIKE,
    LengthDist("long-tail", 50, 1.0, 5, 360, "log-normal sigma 1.0 (median ~30), cap 360"),
)

# Caption-like words (WIT captions are short descriptive English with names and places).
CAPTION_WORDS = (
    "a the of in on at with and by from view photograph portrait painting church station river bridge "
    "mountain village town city street building house castle tower museum park garden lake sea coast beach "
    "harbour island valley forest road railway train bus car ship boat aircraft airport map flag coat arms "
    "statue monument memorial cathedral temple mosque palace hall school university library theatre stadium "
    "team player match season football cricket olympic championship national football club league cup final "
    "festival concert band singer actor film poster album cover logo signature seal stamp coin banknote "
    "north south east west old new upper lower central main great small little saint king queen prince "
    "general president minister bishop emperor family wife son daughter born died century war battle army "
    "navy soldier regiment district province county region state republic kingdom empire parish municipality "
    "interior exterior entrance facade detail front side rear aerial night winter summer spring autumn "
    "during after before circa year early late first second third one two three many species flower tree "
    "bird fish insect mammal specimen skull leaf fruit seed plant animal wild habitat range distribution"
).split()


def make_texts(tokenizer: Any, lengths: list[int], seed: int = 0) -> list[str]:
    """Texts of caption words whose token counts (with the tokenizer's special tokens) are the
    given lengths. Byte-level BPE splits on spaces first, so a text's count is the sum of its
    words' counts; one-token words fill the end exactly."""
    rng = random.Random(seed)

    def count(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - count("a")
    spaced = {w: count(" " + w) for w in CAPTION_WORDS}
    first = {w: count(w) for w in CAPTION_WORDS}
    ones = [w for w, c in spaced.items() if c == 1] or ["a"]
    texts = []
    for target in lengths:
        words, total = [], special
        while total < target:
            w = rng.choice(CAPTION_WORDS)
            c = spaced[w] if words else first[w]
            if total + c > target:
                w = rng.choice(ones)
                c = spaced[w] if words else first[w]
            words.append(w)
            total += c
        texts.append(" ".join(words))
    return texts


def synthetic_images(n: int, size: tuple[int, int] = (512, 384), seed: int = 0) -> list[Any]:
    """Noise images of a typical WIT photo size (decoded PIL images, as the data set yields)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
