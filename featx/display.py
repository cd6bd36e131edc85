"""The run's progress in a terminal: models done of the run, failed and skipped, elapsed and the
run's time left, as a tqdm bar above the model's bar (``featx.logs.Progress``).

The estimate (``time_left``) is pure: a per-model cost and seconds per unit of work
(``model_works``), fitted on the models committed so far, over the models still to do. ``RunDisplay`` is the thin terminal adapter:
on a terminal with text logs it draws the bar, writes featx's event lines above it and keeps the
libraries' own bars and log records off the screen (their warnings become featx ``warning``
lines); elsewhere (pipes, Jobs, ``--log_format json``) it only counts, and the log is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from featx.catalog.spec import ModelSpec
    from featx.logs import EventLog

# Loggers of the libraries featx loads models with: their records go through featx's log while
# the display is up (transformers and huggingface_hub install their own stderr handlers).
LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "timm", "accelerate", "bitsandbytes", "torch")
REFRESH_S = 0.5  # the run bar's elapsed and time left are redrawn at most this often


def model_works(specs: Sequence[ModelSpec]) -> dict[str, tuple[str, float]]:
    """Each model's modality and size as the time to extract it grows: its parameter count (every
    catalog entry of the real modelsets has one). A model without one (featx-smoke's, a local
    directory) counts as the mean of the run's others of its modality, or as 1 when none has one:
    then each model of the modality costs the same, the mean of those done."""
    known: dict[str, list[float]] = {}
    for s in specs:
        if s.params:
            known.setdefault(s.modality, []).append(float(s.params))
    mean = {m: sum(ws) / len(ws) for m, ws in known.items()}
    return {s.id: (s.modality, float(s.params) if s.params else mean.get(s.modality, 1.0)) for s in specs}


def fit(done: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Seconds per model and per unit of work, ``seconds ~ a + b * work`` by least squares over the
    models measured so far, neither below zero (loading and committing cost each model about the
    same; the rest grows with its size). One size seen: proportional. None before any."""
    if not done:
        return None
    n = len(done)
    mw, ms = sum(w for w, _ in done) / n, sum(s for _, s in done) / n
    var = sum((w - mw) ** 2 for w, _ in done)
    if mw <= 0 or ms <= 0:
        return None
    if var == 0:
        return 0.0, ms / mw
    b = sum((w - mw) * (s - ms) for w, s in done) / var
    a = ms - b * mw
    if b < 0:
        return ms, 0.0
    if a < 0:
        return 0.0, sum(w * s for w, s in done) / sum(w * w for w, _ in done)
    return a, b


def time_left(done: Sequence[tuple[float, float]], todo: Sequence[float], current: tuple[float, float] | None = None
              ) -> float | None:
    """Seconds the run still needs, or None before any model has been measured.

    ``done``: (work, seconds) of the models extracted so far; ``todo``: the work of the models not
    started; ``current``: (work, seconds spent) of the model in progress, which counts for what is
    left of it (never less than nothing)."""
    ab = fit(done)
    if ab is None:
        return None
    a, b = ab
    left = sum(a + b * w for w in todo)
    if current is not None:
        left += max(a + b * current[0] - current[1], 0.0)
    return left


def clock(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``, or ``?`` when unknown."""
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class RunTally:
    """Where the run stands: what the bar shows, and what the estimate is computed from. Language
    and vision models cost differently for their size (texts vs decoded images), so each modality's
    time left comes from its own committed models, or from all of them until one of it is done."""

    works: dict[str, tuple[str, float]]  # every model of the run -> (modality, work), in run order
    ended: dict[str, str] = field(default_factory=dict)  # model -> committed | skipped | failed
    measured: list[tuple[str, float, float]] = field(default_factory=list)  # (modality, work, seconds), committed
    current: str | None = None

    def count(self, status: str) -> int:
        return sum(s == status for s in self.ended.values())

    def left(self, current_seconds: float = 0.0) -> float | None:
        total = 0.0
        for modality in dict.fromkeys(m for m, _ in self.works.values()):
            done = [(w, s) for m, w, s in self.measured if m == modality] or [(w, s) for _, w, s in self.measured]
            todo = [w for model, (m, w) in self.works.items()
                    if m == modality and model not in self.ended and model != self.current]
            cur = self.works.get(self.current or "")
            part = time_left(done, todo, (cur[1], current_seconds) if cur and cur[0] == modality else None)
            if part is None:
                return None
            total += part
        return total

    def line(self, elapsed: float, current_seconds: float = 0.0) -> str:
        return (f"failed {self.count('failed')}, skipped {self.count('skipped')}, "
                f"elapsed {clock(elapsed)}, left {clock(self.left(current_seconds))}")


class RunDisplay:
    """The run's bar on a terminal (text logs, stderr a TTY); a tally only elsewhere."""

    def __init__(self, log: EventLog, specs: Sequence[ModelSpec]):
        self.log = log
        self.tally = RunTally(model_works(specs))
        self.on_terminal = log.fmt == "text" and log.stream.isatty()
        self.bar = None
        self.start = self.model_start = self.drawn = time.perf_counter()

    def __enter__(self) -> RunDisplay:
        if self.on_terminal:
            from tqdm import tqdm

            self._quiet = contextlib.ExitStack()
            self._quiet.enter_context(self._libraries_quiet())
            self.bar = tqdm(total=len(self.tally.works), unit="model", file=self.log.stream, position=0,
                            leave=True, dynamic_ncols=True, bar_format="run {n_fmt}/{total_fmt} models |{bar}| {desc}")
            self.log.writer = lambda line: tqdm.write(line, file=self.log.stream)
            self._draw()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self._draw()
            self.bar.close()
            self.log.writer = None
            self._quiet.close()

    def started(self, model: str) -> None:
        self.tally.current, self.model_start = model, time.perf_counter()
        self._draw()

    def ended(self, model: str, status: str, seconds: float = 0.0) -> None:
        self.tally.ended[model] = status
        if status == "committed":
            self.tally.measured.append((*self.tally.works[model], seconds))
        if self.tally.current == model:
            self.tally.current = None
        if self.bar is not None:
            self.bar.update(1)
        self._draw()

    def tick(self) -> None:
        """A model's bar moved: redraw the run's elapsed and time left now and then."""
        if self.bar is not None and time.perf_counter() - self.drawn >= REFRESH_S:
            self._draw()

    def _draw(self) -> None:
        if self.bar is None:
            return
        now = self.drawn = time.perf_counter()
        current = now - self.model_start if self.tally.current is not None else 0.0
        self.bar.set_description_str(self.tally.line(now - self.start, current))

    @contextlib.contextmanager
    def _libraries_quiet(self) -> Iterator[None]:
        """No library bar or log line between featx's: progress bars off, log records and Python
        warnings of WARNING and above as featx ``warning`` lines, the rest dropped."""
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        from transformers.utils import logging as hf_logging

        log = self.log

        class ToEventLog(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                log.event("warning", source=record.name, message=record.getMessage().splitlines()[0][:500])

        handler = ToEventLog(logging.WARNING)
        saved = [(lg, lg.handlers[:], lg.propagate) for lg in map(logging.getLogger, LIBRARY_LOGGERS)]
        hub_bars, hf_bars = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
        disable_progress_bars()
        hf_logging.disable_progress_bar()
        for lg, _, _ in saved:
            lg.handlers, lg.propagate = [handler], False
        try:
            with warnings.catch_warnings():
                warnings.showwarning = lambda message, category, *_a, **_k: log.event(
                    "warning", source=category.__name__, message=str(message).splitlines()[0][:500])
                yield
        finally:
            for lg, handlers, propagate in saved:
                lg.handlers, lg.propagate = handlers, propagate
            if not hub_bars:
                enable_progress_bars()
            if hf_bars:
                hf_logging.enable_progress_bar()
