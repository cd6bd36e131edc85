"""Extraction benchmark: featx vs the reference (platonic-rep) loop, same weights and inputs,
interleaved rounds, the WIT-like headline and a caption-length sensitivity table.

  python -m bench.extract                          # make bench: GPT-2 124M + Llama-style 134M on CPU
  python -m bench.extract --mode gpu --device cuda # make bench-gpu: 7B configs + real-size ViTs
  python -m bench.extract --mode quick             # seconds: smoke-size models, checks the harness

Results: bench/results/extract-<device>.json (quick: bench/results/quick/); the README's table is
generated from them by ``python -m bench.report --update-readme``. Fields: bench/README.md.
"""

from __future__ import annotations

import argparse
import sys

from bench.extract.run import MODES, run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="cpu",
                   help="cpu (default), gpu (7B configs, real-size ViTs), quick (smoke-size models: a harness check)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda for --mode gpu, else cpu)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per side (default 3)")
    p.add_argument("--n", type=int, default=None, help="texts (images) per run (default: the mode's)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME", help="only these cases (e.g. gpt2-124m llama-7b)")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--vision", dest="vision", action="store_true", default=None, help="include vision models (default: gpu, quick)")
    vis.add_argument("--no-vision", dest="vision", action="store_false", help="language models only")
    p.add_argument("--batch_size", type=int, default=None, help="featx's most rows per batch (default: what featx extract picks)")
    p.add_argument("--token_budget", type=int, default=None, help="featx's padded tokens per batch (default: what featx extract picks)")
    p.add_argument("--truth", action="store_true", default=None,
                   help="also compare with unpadded one-text-at-a-time runs for rotary models (always done for absolute positions)")
    p.add_argument("--num_workers", type=int, default=None, help="featx vision data-loader workers (default FEATX_NUM_WORKERS)")
    p.add_argument("--also_plan", action="append", default=[], metavar="BS,BUDGET",
                   help="also time featx with this --batch_size,--token_budget as one more interleaved side (repeatable)")
    p.add_argument("--out", default=None, help="results file (default bench/results/extract-<device>.json)")
    a = p.parse_args(argv)
    run(mode=a.mode, device=a.device or ("cuda" if a.mode == "gpu" else "cpu"), repeats=a.repeats, n=a.n, models=a.models, vision=a.vision, out=a.out,
        batch_size=a.batch_size, token_budget=a.token_budget, truth=a.truth, num_workers=a.num_workers,
        also_plans=tuple(tuple(int(x) for x in v.split(",")) for v in a.also_plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
