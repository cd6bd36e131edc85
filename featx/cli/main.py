"""Entry point: wires the command modules; errors become one line with the fix
(tracebacks only with FEATX_DEBUG=1)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from featx import __version__, settings
from featx.cli.termination import report_termination
from featx.errors import EXIT_USAGE, FeatxError, clip
from featx.signals import Interrupted, stop_on_signals

MAX_LINE = 1000  # an error line, whatever went into it: messages name inputs clipped far shorter
COMMANDS = ("featx.cli.extract", "featx.cli.models", "featx.cli.status", "featx.cli.kube", "featx.cli.align")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line + usage hint, exit 2
        self.exit(EXIT_USAGE, f"featx: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featx", description=__doc__)
    parser.add_argument("--version", action="version", version=f"featx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # command group not installed in this build
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():  # SIGTERM too: as a container's PID 1, featx would otherwise ignore it
            return args.run(args)
    except FeatxError as e:
        if settings.DEBUG:
            raise
        line = f"featx: error: {clip(e, MAX_LINE, quote=False)}"
        print(line, file=sys.stderr)
        report_termination(line)
        return e.exit_code
    except MemoryError:  # models' own failures are caught per model: this is the input's size
        if settings.DEBUG:
            raise
        line = "featx: error: out of memory reading the input: check the size of the modelset, values or data set files"
        print(line, file=sys.stderr)
        report_termination(line)
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt) as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        line = f"featx: interrupted by {stop.name}" + (f" {stop.detail}" if stop.detail else "")
        print(line, file=sys.stderr)
        report_termination(line)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
