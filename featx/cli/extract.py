"""``featx extract``: features of a modelset (or single models) into a directory or S3."""

from __future__ import annotations

import argparse
import sys

from featx import settings
from featx.cli.options import add_data, add_selection, add_store, add_weights, flag, open_store_from
from featx.cli.termination import report_termination

EXAMPLES = """examples:
  featx extract --modelset smoke --dataset featx-sample
  featx extract --modelset val --modality language --pool avg --token_budget 8192
  featx extract --models gpt2 vit_base_patch16_224.augreg_in21k --store s3://my-bucket/features
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract per-layer pooled features", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_selection(p)
    add_data(p)
    add_store(p)
    g = p.add_argument_group("how")
    flag(g, "batch_size", type=int, default=None, help="most rows (texts or images) per batch (default: as many as the token budget allows)")
    flag(g, "token_budget", type=int, default=None, help="most padded tokens per batch (default: from free GPU memory; 1024 on CPU)")
    flag(g, "force_remake", action="store_true", help="re-extract models that are already committed")
    add_weights(g)
    flag(g, "device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    flag(g, "num_workers", type=int, default=settings.NUM_WORKERS, help="image decoding/transform worker processes")
    flag(g, "log_format", choices=["text", "json"], default="text")
    flag(g, "attempt", type=int, default=1, help=argparse.SUPPRESS)  # set by the Kubernetes controller
    flag(g, "gpu_class", default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from featx.catalog import resolve
    from featx.data import load_rows
    from featx.errors import UsageError
    from featx.extract.runner import ExtractOptions
    from featx.pipeline.runner import RunOptions, Runner
    from featx.logs import EventLog

    for name in ("batch_size", "token_budget", "num_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} {value}: give a positive number")
    specs = resolve(args.modelset, args.models, args.modality)
    if not specs:
        raise UsageError("no models selected: check --modelset/--models and --modality")
    for spec in specs:
        spec.pool_for(args.pool)
    store = open_store_from(args)
    store.check()
    rows = load_rows(args.dataset, args.subset, args.caption_idx, args.num_samples)
    extract = ExtractOptions(pool=args.pool, batch_size=args.batch_size, token_budget=args.token_budget,
                             qlora=args.qlora, init=args.init, seed=args.seed, device=args.device,
                             num_workers=args.num_workers)
    opts = RunOptions(extract, force_remake=args.force_remake, fmt=args.format, attempt=args.attempt,
                      gpu_class=args.gpu_class)
    log = EventLog(args.log_format)
    summary = Runner(store, rows, opts, args.caption_idx, log).run(specs)
    if args.log_format == "text":
        print(summary.table(), file=sys.stdout)
    failed = [o for o in summary.outcomes if o.status == "failed"]
    log.event("summary", committed=sum(o.status == "committed" for o in summary.outcomes),
              skipped=sum(o.status == "skipped" for o in summary.outcomes), failed=len(failed))
    if failed:
        report_termination("; ".join(o.reason if o.model in o.reason else f"{o.model}: {o.reason}" for o in failed))
    return summary.exit_code
