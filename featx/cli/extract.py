"""``featx extract``: features of a modelset (or single models) into a directory or S3."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from featx import settings
from featx.cli.options import add_selection, add_store, open_store_from, unique_models
from featx.flags import flag
from featx.cli.termination import report_termination
from featx.errors import clip
from featx.pipeline.request import add_data_options, add_policy_options, add_shard_options, add_weight_options
from featx.signals import Interrupted, deferred

if TYPE_CHECKING:
    from featx.catalog.spec import ModelSpec
    from featx.logs import EventLog
    from featx.pipeline.runner import RunSummary, Runner

EXAMPLES = """examples:
  featx extract --modelset smoke --dataset featx-sample
  featx extract --modelset val --modality language --pool avg --token_budget 8192
  featx extract --models gpt2 vit_base_patch16_224.augreg_in21k --store s3://my-bucket/features
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract per-layer pooled features", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_selection(p)
    add_data_options(p)
    add_store(p)
    g = p.add_argument_group("how")
    flag(g, "batch_size", type=int, default=None, help="most rows (texts or images) per batch (default: as many as the token budget allows)")
    flag(g, "token_budget", type=int, default=None, help="most padded tokens per batch (default: from free GPU memory; 1024 on CPU)")
    flag(g, "force_remake", action="store_true", help="re-extract models that are already committed")
    flag(g, "verify", action="store_true",
         help="read committed files and check their sha256 before skipping them; redo those that fail")
    add_weight_options(g)
    add_shard_options(p.add_argument_group("row shards"))
    add_policy_options(g)
    flag(g, "device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    flag(g, "num_workers", type=int, default=settings.NUM_WORKERS, help="image decoding/transform worker processes")
    flag(g, "log_format", choices=["text", "json"], default="text")
    flag(g, "attempt", type=int, default=1, help=argparse.SUPPRESS)  # set by the Kubernetes controller
    flag(g, "gpu_class", default=None, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """SIGTERM/SIGINT (``featx.signals``, installed by ``featx.cli.main``) stop the run: a commit in
    progress completes first, then one line says what was and was not committed and the exit
    status is 128 + the signal number."""
    try:
        runner, specs = _prepare(args)
    except Interrupted as stop:
        stop.detail = "before any model started; nothing was committed"
        raise
    summary = runner.run(specs)
    with deferred():  # the report is printed whole; a signal now only sets the exit status
        return _report(args, summary, runner.log)


def _prepare(args: argparse.Namespace) -> tuple[Runner, list[ModelSpec]]:
    from featx.catalog import resolve
    from featx.data import load_rows
    from featx.errors import UsageError
    from featx.extract.runner import ExtractOptions
    from featx.logs import EventLog
    from featx.pipeline.request import RunRequest
    from featx.pipeline.runner import RunOptions, Runner

    for name in ("batch_size", "token_budget"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} {value}: give a positive number")
    request = RunRequest.from_args(args)
    specs = resolve(args.modelset, unique_models(args), args.modality)
    if not specs:
        raise UsageError("no models selected: check --modelset/--models and --modality")
    request.check(specs)  # every key part (data set, subset, model, pool) and policy, before any work
    store = open_store_from(args)
    store.check(write=True)
    rows = load_rows(request.dataset, request.subset, request.caption_idx, request.num_samples)
    extract = ExtractOptions(batch_size=args.batch_size, token_budget=args.token_budget, device=args.device,
                             num_workers=args.num_workers)
    opts = RunOptions(extract, force_remake=args.force_remake, verify=args.verify, attempt=args.attempt,
                      gpu_class=args.gpu_class)
    log = EventLog(args.log_format)
    for line in request.notes(specs):
        log.event("note", message=line)
    return Runner(store, rows, request, opts, log), specs


def _report(args: argparse.Namespace, summary: RunSummary, log: EventLog) -> int:
    if args.log_format == "text":
        print(summary.table(), file=sys.stdout)
    if summary.interrupted is not None:
        print(f"featx: {summary.interruption()}", file=sys.stderr)
        report_termination(f"featx: {summary.interruption()}")
        return summary.exit_code
    failed = [o for o in summary.outcomes if o.status == "failed"]
    reasons = "; ".join(o.reason if o.model in o.reason else f"{o.model}: {o.reason}" for o in failed)
    log.event("summary", committed=sum(o.status == "committed" for o in summary.outcomes),
              skipped=sum(o.status == "skipped" for o in summary.outcomes), failed=len(failed),
              failures=clip(reasons, 500, quote=False) if failed else None)
    if failed:
        report_termination(reasons)
    return summary.exit_code
