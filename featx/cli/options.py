"""Options shared by several commands, declared once. Flags use the reference's underscore
spelling (``--output_dir``) and accept the dashed one too (``--output-dir``)."""

from __future__ import annotations

import argparse
import sys

from featx import settings
from featx.flags import flag


def add_selection(p: argparse.ArgumentParser, default: str = "custom") -> None:
    g = p.add_argument_group("which models")
    flag(g, "modelset", help=f"built-in modelset (custom, val, test, exhaustive, exhaustive-2024, smoke) or a YAML file (default: {default})")
    flag(g, "models", nargs="+", metavar="ID", help="model ids instead of a modelset (HF id, timm name, local dir)")
    flag(g, "modality", default="all", choices=["all", "language", "vision"])


def unique_models(args: argparse.Namespace) -> list[str] | None:
    """``--models`` without repeats, first occurrence order kept; says so in one line when it drops any."""
    if not args.models:
        return args.models
    unique = list(dict.fromkeys(args.models))
    if len(unique) < len(args.models):
        repeated = [m for m in unique if args.models.count(m) > 1]
        print(f"featx: --models names {', '.join(repeated)} more than once; each model runs once", file=sys.stderr)
    return unique


def add_store(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where features live")
    flag(g, "output_dir", default=None, help=f"local directory (default {settings.DEFAULT_OUTPUT_DIR})")
    flag(g, "store", default=None, help="store URL: s3://bucket/prefix or a directory")
    flag(g, "s3_endpoint", default=None, help="S3 endpoint URL (overrides AWS_ENDPOINT_URL)")


def open_store_from(args: argparse.Namespace):
    from featx.store import open_store

    if args.store and args.output_dir:
        from featx.errors import UsageError

        raise UsageError("give either --store or --output_dir, not both")
    options = {"endpoint_url": args.s3_endpoint} if args.s3_endpoint else {}
    return open_store(args.store, args.output_dir, **options)
