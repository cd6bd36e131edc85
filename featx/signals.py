"""SIGTERM and SIGINT as one exception a run can account for.

Kubernetes stops a pod with SIGTERM (deletion, preemption, eviction) and a user with Ctrl-C
(SIGINT). Under ``stop_on_signals`` either one raises ``Interrupted`` in the main thread, so
``finally`` blocks remove temporary files and abort uploads, and the command can say what was and
was not committed. A commit's publish section (data rename or final PUT, then the manifest) runs
under ``deferred``: a signal arriving there is held until the manifest is written, so an
interrupted run never leaves a data object without its manifest.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_pending: list[int] = []
_depth = 0  # nesting of ``deferred`` blocks


class Interrupted(BaseException):
    """A stop signal; a BaseException so that per-model ``except Exception`` handlers neither
    record it as the model's failure nor carry on with the next model."""

    def __init__(self, signum: int):
        self.signum = signum
        self.detail = ""  # what the command had done when it came, if it cannot say it otherwise
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """128 + signal number: the shell's convention, which ``kubectl`` shows (143, 130)."""
        return 128 + self.signum


def _handle(signum: int, frame: object) -> None:
    if _depth:
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into ``Interrupted`` for the duration of the block (Python lets only
    the main thread set handlers: elsewhere, as when an application calls featx from a worker
    thread, the block runs with the handlers it has)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals until the block ends, then raise the first one (keep the block short:
    Kubernetes sends SIGKILL after the pod's grace period, 30 s by default)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Interrupted(signum)
