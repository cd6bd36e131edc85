"""The one way featx declares a flag: the reference's underscore spelling (``--output_dir``), with
the dashed one (``--output-dir``) accepted too. Used by the CLI and by the controller, which parses
``job.extraArgs`` exactly as ``featx extract`` does."""

from __future__ import annotations

import argparse


def flag(parser: argparse._ActionsContainer, name: str, **kwargs) -> None:
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, **kwargs)
