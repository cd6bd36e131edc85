#!/usr/bin/env python
"""Extraction benchmark: featx vs the reference (platonic-rep) loop, same weights and inputs.

  python scripts/bench_extract.py --device cpu            # make bench: GPT-2-size + Llama-style, 256 texts
  python scripts/bench_extract.py --device cuda --gpu     # make bench-gpu: 7B configs + real-size ViTs
  python scripts/bench_extract.py --tiny                  # seconds: smoke-size models, checks the harness

Results: bench/results/extract-<device>.json (see bench/README.md for every field).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--gpu", action="store_true", help="GPU model set: llama-7b, mistral-7b, ViT-L/14 DINOv2 518px, ViT-H/14 CLIP")
    p.add_argument("--tiny", action="store_true", help="smoke-size models and few inputs (harness check, not a measurement)")
    p.add_argument("--n", type=int, default=None, help="texts/images per model (default 256 CPU, 1024 GPU; 64 images on CPU)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME", help="only these cases (e.g. gpt2-124m llama-7b)")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--vision", dest="vision", action="store_true", default=None, help="include vision models (default on GPU)")
    vis.add_argument("--no-vision", dest="vision", action="store_false", help="language models only")
    p.add_argument("--batch_size", type=int, default=None, help="featx's most rows per batch (default: what featx extract picks)")
    p.add_argument("--token_budget", type=int, default=None, help="featx's padded tokens per batch (default: what featx extract picks)")
    p.add_argument("--truth", action="store_true", default=None,
                   help="also compare with unpadded one-text-at-a-time runs for rotary models (always done for absolute positions)")
    p.add_argument("--num_workers", type=int, default=None, help="featx vision data-loader workers (default FEATX_NUM_WORKERS)")
    p.add_argument("--profile", metavar="DIR", default=None, help="pyinstrument profile of each featx language run into DIR")
    p.add_argument("--also_plan", action="append", default=[], metavar="BS,BUDGET",
                   help="also time featx with this --batch_size,--token_budget (what-if; repeatable)")
    p.add_argument("--out", default=None, help="results file (default bench/results/extract-<device>.json)")
    a = p.parse_args(argv)

    from featx.bench.extract_bench import run

    run(device=a.device, gpu=a.gpu, tiny=a.tiny, n=a.n, models=a.models, vision=a.vision, out=a.out,
        batch_size=a.batch_size, token_budget=a.token_budget, truth=a.truth, profile_dir=a.profile,
        num_workers=a.num_workers, also_plans=[tuple(int(x) for x in v.split(",")) for v in a.also_plan])
    return 0


if __name__ == "__main__":
    sys.exit(main())
