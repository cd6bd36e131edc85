"""``featx align`` (cross-model alignment from stored features) and ``featx report`` (heat maps,
alignment vs. model size, one HTML page)."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path

from featx.align import registry
from featx.catalog.spec import POOL_CHOICES
from featx.cli.options import add_store
from featx.flags import flag
from featx.pipeline.request import add_data_options, add_format_option

OUTLIER_MODES = ("exact", "quantile")
METRIC_CHOICES = registry.METRICS
DEFAULT_OUT = "results/alignment"

ALIGN_EXAMPLES = """examples:
  featx align --modelset val --x language --y vision --metric mutual_knn --topk 10
  featx align --x val:language --y val:vision --metric cka --layers all --store s3://bucket/features
  featx align --modelset smoke --dataset featx-sample --x language --y vision --metric mutual_knn cknna
  featx align --modelset val --x language --y vision --metric cka --layout reference --outliers quantile
  featx align --x vision --modelset val --y ./my_feats.pt --metric mutual_knn   # your features vs stored models
  featx report                       # heat maps + index.html for everything under results/alignment

--x/--y: a modality (language, vision, all) of --modelset/--models, a modelset name or YAML file
(all its models), or MODELSET:MODALITY. The side's name in the output path is MODELSET-MODALITY
(just MODELSET for all), e.g. results/alignment/minhuh/prh/wit_1024/val-language_pool-avg_val-vision_pool-cls/mutual_knn_k10.npy
With a bare modality and no --modelset/--models, a side is the models of that modality the store
holds for --dataset/--subset, named "stored" (stored-language, stored-vision).
A .pt file (or a directory of .pt files) is a side of your own features: torch.save({'feats': f}, path)
with f a [N, L, D] tensor or a list of [N, D] layers, rows in the data set's order.

measures (--metric; featx/align/metrics.yaml: name, kind, range, k = takes --topk, source):
""" + registry.describe() + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("align", help="cross-model alignment (mutual k-NN, CKA, ...) of stored features",
                       epilog=ALIGN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("which models")
    flag(g, "x", default="language", metavar="SPEC",
         help="first side: MODALITY | MODELSET | MODELSET:MODALITY | FILE.pt | DIR of .pt files (default language)")
    flag(g, "y", default="vision", metavar="SPEC", help="second side (default vision)")
    flag(g, "modelset", default=None,
         help="modelset for bare modalities in --x/--y (default: the models the store holds for --dataset/--subset)")
    flag(g, "models", nargs="+", metavar="ID", help="model ids instead of --modelset for bare modalities")
    g = p.add_argument_group("data (as extracted)")
    add_data_options(g, ("dataset", "subset", "caption_idx"))
    flag(g, "pool_x", choices=POOL_CHOICES, default=None, help="pool of the x side (default avg for language, cls for vision)")
    flag(g, "pool_y", choices=POOL_CHOICES, default=None, help="pool of the y side")
    add_format_option(g)
    add_store(p)
    g = p.add_argument_group("alignment")
    flag(g, "metric", nargs="+", choices=METRIC_CHOICES, default=["mutual_knn"], metavar="NAME",
         help="one or more of the measures listed below (default mutual_knn; features are read once for all)")
    flag(g, "topk", type=int, default=10, help="k of the k-NN metrics (and cknna), as the reference (default 10)")
    flag(g, "layers", choices=["best", "all", "last"], default="best",
         help="best: every layer pair, best kept (reference); all: also save every layer×layer matrix; last: last layers only")
    flag(g, "outliers", choices=OUTLIER_MODES, default="exact",
         help="clamp threshold: exact 0.95 quantile of |x| over a model's whole tensor (default; the reference's "
              "--precise and platonic.Alignment), or quantile: per-row quantiles averaged (its CLI default)")
    flag(g, "no_zero_floor", action="store_true",
         help="keep the best layer pair even when its score is <= 0 (the reference floors the best score at 0)")
    flag(g, "layout", choices=["featx", "reference"], default="featx",
         help="featx: OUT/DATASET/SUBSET/X_pool-P_Y_pool-P/; reference: the reference's to_alignment_filename "
              "(OUT/DATASET/MODELSET/MODALITY_pool-P_prompt-False_.../)")
    flag(g, "knn_index", choices=["exact", "hnsw"], default="exact",
         help="neighbours of the k-NN measures: exact (default, the reference's) or hnsw: approximate (faiss HNSW, "
              "pip install faiss-cpu) for very many rows, its recall@k against exact logged and in the results")
    g = p.add_argument_group("calibration (Groger et al. 2026, permutation null over the whole layer search)")
    flag(g, "calibrate", type=int, default=0, metavar="K",
         help="K permutations of the y side's rows: adds the calibrated score, add-one p-value and threshold "
              "of each pair's max over layer pairs (similarities only; default 0: off; the paper uses 200)")
    flag(g, "alpha", type=float, default=0.05, help="level of the null threshold (default 0.05)")
    flag(g, "seed", type=int, default=0, help="seed of the permutations (default 0)")
    flag(g, "out", default=DEFAULT_OUT, help=f"results directory (default {DEFAULT_OUT})")
    flag(g, "device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    flag(g, "quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=run_align)

    r = sub.add_parser("report", help="heat maps, alignment vs. model size and an HTML page from `featx align` results")
    flag(r, "out", default=DEFAULT_OUT, help=f"results directory `featx align` wrote (default {DEFAULT_OUT})")
    flag(r, "report_dir", default=None, help="where the report goes (default OUT/report)")
    flag(r, "top", type=int, default=10, help="best pairs listed per result")
    r.set_defaults(run=run_report)


def run_align(args: argparse.Namespace) -> int:
    from featx.align.run import Options, align, check_calibration, check_options
    from featx.align.sides import build_side
    from featx.cli.options import open_store_from
    from featx.pipeline.request import RunRequest
    from featx.pipeline.stored import describe, stored_models

    metrics = list(dict.fromkeys(args.metric))
    check_options(metrics, args.topk)
    check_calibration(metrics, args.calibrate, args.alpha, args.knn_index)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(f"featx align: {msg}", file=sys.stderr))
    store = open_store_from(args)
    request = RunRequest(args.dataset, args.subset, caption_idx=args.caption_idx, format=args.format)
    listing = functools.cache(lambda: store.scan(request.scan_prefix))  # one listing at most

    def stored(modality: str, pool: str | None) -> list:
        side = replace(request, pool=pool)
        specs = stored_models(listing(), side, modality)
        log(describe(specs, side))
        return specs

    x, y = (build_side(value, pool, args.modelset, args.models, stored, args.dataset, args.subset, args.caption_idx,
                       args.format) for value, pool in ((args.x, args.pool_x), (args.y, args.pool_y)))
    where = f" --store {args.store}" if args.store else (f" --output_dir {args.output_dir}" if args.output_dir else "")
    hint = f" --dataset {args.dataset}" + (f" --subset {args.subset}" if args.subset else "") + where
    opts = Options(tuple(metrics), args.topk, args.layers, args.device, args.outliers, not args.no_zero_floor,
                   args.layout, args.calibrate, args.alpha, args.seed, args.knn_index)
    for res in align(store, x, y, opts, Path(args.out), hint, log):
        print(res.npy)
        print(res.csv)
        if not args.quiet:
            _print_best(res)
    return 0


def _print_best(res, limit: int = 5) -> None:
    import numpy as np

    flat = [(res.scores[i, j], i, j) for i in range(res.scores.shape[0]) for j in range(res.scores.shape[1])
            if res.x.entries[i].source != res.y.entries[j].source and not np.isnan(res.scores[i, j])]
    distance = registry.REGISTRY[res.metric].kind == "distance"
    cal = res.calibration
    for score, i, j in sorted(flat, reverse=not distance)[:limit]:
        extra = "" if cal is None else (f"  calibrated {cal.calibrated[i, j]:.4f} p={cal.p_values[i, j]:.3g}"
                                         + ("" if cal.p_values[i, j] < cal.alpha else " (not significant)"))
        print(f"  {score:.4f}  {res.x.entries[i].model_id} (layer {res.layer_x[i, j]}) ~ "
              f"{res.y.entries[j].model_id} (layer {res.layer_y[i, j]}){extra}", file=sys.stderr)
    if res.zero_floor and (res.layer_x < 0).any():
        print(f"  {int((res.layer_x < 0).sum())} pair(s) scored 0 with no layer: no layer pair above 0 "
              "(the reference's floor; --no-zero-floor keeps the negative best)", file=sys.stderr)


def run_report(args: argparse.Namespace) -> int:
    from featx.align.report import write_report

    page = write_report(Path(args.out), Path(args.report_dir) if args.report_dir else None, top=args.top)
    print(page)
    return 0
