"""Log lines people (and log shippers) can act on: one event per line, text or JSON.

Text: ``2026-11-27T12:00:00Z featx <event> key=value ...``; JSON: ``{"ts":..., "event":..., ...}``.
Every model's log starts with ``start`` and ends with ``committed``, ``skipped`` or ``failed``;
``progress`` lines come at most every ``interval_s`` seconds (a tqdm bar on a terminal).
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from featx import settings
from featx.clock import now_iso

if TYPE_CHECKING:
    from featx.display import RunDisplay

FORMATS = ("text", "json")


def _text_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"), sort_keys=True)
    return json.dumps(s) if (" " in s or not s) else s


class EventLog:
    def __init__(self, fmt: str = "text", stream: TextIO | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r}: choose text or json")
        self.fmt, self.stream = fmt, stream or sys.stderr
        self.writer: Callable[[str], None] | None = None  # set while featx.display's bars are up

    def event(self, event: str, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.fmt == "json":
            line = json.dumps({"ts": now_iso(), "event": event, **fields}, sort_keys=False, default=str)
        else:
            line = " ".join([now_iso(), "featx", event] + [f"{k}={_text_value(v)}" for k, v in fields.items()])
        if self.writer is not None:
            self.writer(line)
        else:
            print(line, file=self.stream, flush=True)


class Progress:
    """Samples done, rate and ETA: a tqdm bar on a terminal, else a ``progress`` event every
    ``interval_s`` seconds (readable in ``kubectl logs``). On a terminal the run's bar
    (``featx.display``) is told of each step, so its elapsed and time left move too."""

    def __init__(self, log: EventLog, model: str, total: int, interval_s: float | None = None,
                 run: RunDisplay | None = None):
        self.log, self.model, self.total, self.run = log, model, total, run
        self.interval = settings.PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if log.fmt == "text" and log.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=model, unit="sample", file=log.stream, leave=False)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if self.run is not None:
                self.run.tick()
            return
        now = time.perf_counter()
        if now - self.last >= self.interval or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.log.event("progress", model=self.model, done=f"{self.done}/{self.total}",
                           samples_per_s=round(rate, 1), eta_s=round((self.total - self.done) / rate, 1) if rate else None)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
