"""Texts longer than a language model's maximum positions: cut with one ``truncated`` event per
model, counted in the manifest, and ``bpb`` over the bytes of the text the model read (the
reference divides the kept tokens' loss by the whole caption's bytes: 0.0256 instead of ~2.1 on a
180k-character caption)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from featx.catalog import get_spec
from featx.data.sample import FILLER, build_sample
from featx.extract.loading import load_language
from tests.helpers import run_cli

GPT2 = "featx-smoke/gpt2"  # n_positions 512
LONG = " ".join(FILLER) + ". "


@pytest.fixture(scope="module")
def long_captions(tmp_path_factory):
    """Four rows: two short captions, one of ~40 positions' worth and one of ~180k characters."""
    folder = build_sample(tmp_path_factory.mktemp("data") / "long", rows=4)
    lines = [json.loads(x) for x in (folder / "captions.jsonl").read_text().splitlines()]
    texts = [lines[0]["text"][0], (LONG * 4000)[:180_000], lines[2]["text"][0], LONG * 40]
    (folder / "captions.jsonl").write_text(
        "".join(json.dumps({"file": r["file"], "text": t}) + "\n" for r, t in zip(lines, texts)))
    return folder, texts


def independent_bpb(texts: list[str]) -> tuple[float, float]:
    """bpb as the kept tokens' loss over the kept text's bytes, from the model's own logits one
    text at a time; and the reference's value (whole-caption bytes) for the same loss."""
    loaded = load_language(get_spec(GPT2), "random", "cpu")  # the smoke model's seed-0 weights
    tok, limit = loaded.tokenizer, loaded.model.config.n_positions
    fixed, reference = [], []
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([tok(text, truncation=True, max_length=limit)["input_ids"]])
            logits = loaded.model(input_ids=ids).logits
            bits = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum").item() * math.log2(math.e)
            fixed.append(bits / len(tok.decode(ids[0], skip_special_tokens=True).encode("utf-8")))
            reference.append(bits / len(text.encode("utf-8")))
    return sum(fixed) / len(fixed), sum(reference) / len(reference)


def test_long_captions_warn_once_count_in_the_manifest_and_bpb_uses_the_read_bytes(tmp_path, long_captions):
    folder, texts = long_captions
    r = run_cli("extract", "--models", GPT2, "--dataset", str(folder), "--output_dir", str(tmp_path),
                "--num_workers", "0", "--log_format", "json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.err.splitlines()]
    warnings = [e for e in events if e["event"] == "truncated"]
    assert [(e["model"], e["rows"], e["max_tokens"]) for e in warnings] == [(GPT2, 2, 512)]

    (manifest_path,) = tmp_path.rglob("featx-smoke_gpt2_pool-avg.manifest.json")
    extraction = json.loads(manifest_path.read_text())["extraction"]
    assert extraction["truncated_rows"] == 2 and extraction["max_positions"] == 512

    saved = torch.load(manifest_path.with_name("featx-smoke_gpt2_pool-avg.pt"), weights_only=True)
    fixed, reference = independent_bpb(texts)
    assert saved["bpb"].item() == pytest.approx(fixed, rel=1e-4)
    assert saved["bpb"].item() > 1.5 * reference  # the whole caption's bytes would understate it


def test_short_texts_are_not_reported(tmp_path):
    r = run_cli("extract", "--models", GPT2, "--dataset", "featx-sample", "--num_samples", "4",
                "--output_dir", str(tmp_path), "--num_workers", "0", "--log_format", "json")
    assert r.code == 0, r.err
    assert '"truncated"' not in r.err
    (manifest_path,) = tmp_path.rglob("*.manifest.json")
    assert json.loads(manifest_path.read_text())["extraction"]["truncated_rows"] == 0
