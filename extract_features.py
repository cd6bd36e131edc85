#!/usr/bin/env python
"""Drop-in for platonic-rep's ``extract_features.py``: the reference's flags, featx's engine.

    python extract_features.py --dataset minhuh/prh --subset wit_1024 --modelset val \\
        --modality language --pool avg --output_dir ./results/features

Differences are deliberate (see README): features do not depend on batch mates, batches are
length-sorted, a failing model leaves no file, ``prh`` means ``minhuh/prh``.
"""

from __future__ import annotations

import argparse
import sys

from featx.cli.main import main


def translate(argv: list[str]) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force_download", action="store_true", help="accepted; the hub cache decides")
    p.add_argument("--force_remake", action="store_true")
    p.add_argument("--num_samples", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--pool", type=str, default="avg", choices=["avg", "cls", "last", "max"])
    p.add_argument("--prompt", action="store_true")
    p.add_argument("--dataset", type=str, default="prh")
    p.add_argument("--subset", type=str, default="wit_1024")
    p.add_argument("--caption_idx", type=int, default=0)
    p.add_argument("--modelset", type=str, default="val")
    p.add_argument("--modality", type=str, default="all", choices=["vision", "language", "all"])
    p.add_argument("--output_dir", type=str, default="./results/features")
    p.add_argument("--qlora", action="store_true")
    a = p.parse_args(argv)
    if a.prompt:
        p.exit(2, "extract_features.py: error: --prompt is not supported by featx; run without it\n")
    out = ["extract", "--dataset", a.dataset, "--subset", a.subset, "--modelset", a.modelset,
           "--modality", a.modality, "--pool", a.pool, "--output_dir", a.output_dir,
           "--caption_idx", str(a.caption_idx), "--batch_size", str(max(a.batch_size, 1))]
    if a.num_samples is not None:
        out += ["--num_samples", str(a.num_samples)]
    out += ["--force_remake"] * a.force_remake + ["--qlora"] * a.qlora
    return out


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
