"""The run's progress in a terminal (featx.display): the time-left estimate against a direct
computation, and a real ``featx extract`` in a real terminal (tmux), read off the screen.

Piped runs keep today's log lines exactly: tests/test_logs.py runs ``featx extract`` as a
subprocess with stderr a pipe and parses every line against the documented format."""

from __future__ import annotations

import io
import logging
import re
import shlex
import shutil
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from featx.catalog import resolve
from featx.display import RunTally, clock, fit, model_works, time_left
from tests.helpers import FEATX, REPO

SMOKE3 = ["featx-smoke/gpt2", "featx-smoke/vit", "featx-smoke/llama"]


def test_fit_is_least_squares_of_seconds_on_work():
    done = [(1.0, 3.0), (2.0, 4.5), (4.0, 9.0), (8.0, 14.0)]
    b, a = np.polyfit([w for w, _ in done], [s for _, s in done], 1)  # numpy's least squares line
    assert fit(done) == pytest.approx((a, b))
    todo = [3.0, 16.0]
    assert time_left(done, todo) == pytest.approx(sum(a + b * w for w in todo))
    # the model in progress counts for what is left of it, never less than nothing
    assert time_left(done, todo, current=(8.0, 10.0)) == pytest.approx(sum(a + b * w for w in todo) + a + b * 8 - 10)
    assert time_left(done, todo, current=(8.0, 99.0)) == pytest.approx(sum(a + b * w for w in todo))
    assert time_left(done, []) == 0.0


def test_fit_never_goes_below_zero_and_is_proportional_for_one_size():
    assert fit([(2.0, 10.0)]) == (0.0, 5.0)
    assert fit([(2.0, 10.0), (2.0, 20.0)]) == (0.0, 7.5)
    assert fit([(1.0, 9.0), (3.0, 5.0)]) == (7.0, 0.0)  # bigger was faster: a cost per model only
    through_zero = [(1.0, 0.5), (2.0, 5.0)]  # the line would cut the axis below zero: b through 0
    assert fit(through_zero) == pytest.approx((0.0, (0.5 + 10.0) / 5.0))


def test_time_left_unknown_before_any_model_was_measured():
    assert time_left([], [1.0, 2.0]) is None
    assert time_left([(1.0, 0.0)], [1.0]) is None


def test_tally_counts_and_leaves_out_skipped_and_failed_from_the_rate():
    tally = RunTally({"a": ("language", 1.0), "b": ("language", 3.0), "c": ("language", 2.0),
                      "d": ("language", 4.0)})
    tally.ended.update(a="skipped", b="committed")
    tally.measured.append(("language", 3.0, 6.0))  # 2 s per unit
    tally.ended["c"] = "failed"
    tally.current = "d"
    assert tally.left(current_seconds=5.0) == pytest.approx(2.0 * 4.0 - 5.0)
    assert tally.line(elapsed=75.0, current_seconds=5.0) == "failed 1, skipped 1, elapsed 1:15, left 0:03"


def test_tally_estimates_each_modality_from_its_own_models_once_one_is_done():
    works = {"l1": ("language", 1.0), "l2": ("language", 2.0), "v1": ("vision", 1.0), "v2": ("vision", 2.0)}
    tally = RunTally(works, ended={"l1": "committed"}, measured=[("language", 1.0, 1.0)])
    assert tally.left() == pytest.approx(2.0 + 1.0 + 2.0)  # vision from the language rate, for now
    tally.ended["v1"] = "committed"
    tally.measured.append(("vision", 1.0, 5.0))
    assert tally.left() == pytest.approx(2.0 * 1.0 + 2.0 * 5.0)


def test_clock():
    assert [clock(None), clock(0), clock(59.6), clock(3723)] == ["?", "0:00", "1:00", "1:02:03"]


def test_model_works_are_parameter_counts_else_the_mean_of_the_modality():
    val = resolve("val", [], "all")
    language = [s for s in val if s.modality == "language"][:2]
    smoke = resolve(None, ["featx-smoke/gpt2", "featx-smoke/vit"], "all")  # no params in the catalog
    works = model_works([*language, *smoke])
    assert [works[s.id] for s in language] == [("language", float(s.params)) for s in language]
    assert works["featx-smoke/gpt2"] == ("language", (language[0].params + language[1].params) / 2)
    assert works["featx-smoke/vit"] == ("vision", 1.0)


TMUX = shutil.which("tmux")
RUN_BAR = re.compile(r"^run (\d+)/3 models \|.*\| failed (\d+), skipped (\d+), elapsed \d+:\d\d, left (\S+)\s*$")
EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ featx [a-z_-]+( |$)")


def _screens(cmd: str, timeout: float = 600) -> list[str]:
    """Run ``cmd`` in a 200x50 tmux pane; every screen (wrapped lines joined) until it prints its
    exit status. A tmux server of its own each time: one still shutting down never takes the next."""
    socket = f"featx-test-display-{uuid.uuid4().hex[:12]}"
    subprocess.run([TMUX, "-L", socket, "new-session", "-d", "-s", "t", "-x", "200", "-y", "50",
                    f"{cmd}; echo featx-exit=$?; sleep 600"], check=True)
    screens, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            screen = subprocess.run([TMUX, "-L", socket, "capture-pane", "-p", "-J", "-t", "t"],
                                    capture_output=True, text=True, check=True).stdout
            screens.append(screen)
            if "featx-exit=" in screen:
                return screens
            time.sleep(0.2)
        raise AssertionError(f"no exit within {timeout}s:\n{screens[-1] if screens else ''}")
    finally:
        subprocess.run([TMUX, "-L", socket, "kill-server"], check=False)


def _extract_in_terminal(out: Path) -> list[str]:
    cmd = " ".join(shlex.quote(a) for a in [FEATX, "extract", "--models", *SMOKE3, "--dataset", "featx-sample",
                                            "--num_samples", "64", "--output_dir", str(out)])
    return _screens(f"cd {shlex.quote(str(REPO))} && FEATX_NUM_WORKERS=0 {cmd}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (scripts/install-system-deps.sh installs it)")
def test_extract_in_a_terminal_shows_the_run_and_no_library_bars(tmp_path: Path):
    screens = _extract_in_terminal(tmp_path)
    final = [ln for ln in screens[-1].splitlines() if ln.strip()]
    assert final[-1] == "featx-exit=0", screens[-1]
    # every line is featx's: event lines, the run bar, the summary table; nothing from the libraries
    table = [ln for ln in final if ln.startswith(("model ", *SMOKE3))]
    bars = [ln for ln in final if RUN_BAR.match(ln)]
    assert len(table) == 4 and len(bars) == 1, screens[-1]
    strays = [ln for ln in final[:-1] if not (EVENT.match(ln) or ln in table or ln in bars)]
    assert not strays, f"lines that are not featx's on the screen: {strays}"
    assert RUN_BAR.match(bars[0]).groups() == ("3", "0", "0", "0:00"), bars[0]
    assert final[-2].split(" featx ")[1] == "summary committed=3 skipped=0 failed=0"
    # while it ran, the run's progress was beside the model's bar, counting up
    seen = {int(m[1]) for s in screens for ln in s.splitlines() if (m := RUN_BAR.match(ln))}
    assert 3 in seen and len(seen) >= 2, seen
    assert not any("Loading weights" in s for s in screens)
    for p in (tmp_path / "featx-sample").rglob("*.pt"):
        assert p.stat().st_size > 0

    again = [ln for ln in _extract_in_terminal(tmp_path)[-1].splitlines() if ln.strip()]
    bar = next(m for ln in again if (m := RUN_BAR.match(ln)))
    assert bar.groups()[:3] == ("3", "0", "3") and again[-1] == "featx-exit=0", again


EVENT_FIELDS = re.compile(r' source=(\S+) message="([^"]*)"')


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, to open the display without one."""

    def isatty(self) -> bool:
        return True


def test_library_warnings_become_featx_lines_and_their_bars_are_off_while_the_display_is_up():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from featx.display import RunDisplay
    from featx.logs import EventLog

    stream = _Terminal()
    log = EventLog("text", stream)
    before = logging.getLogger("transformers").handlers[:]
    with RunDisplay(log, resolve(None, ["featx-smoke/gpt2"], "all")):
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        hf_logging.get_logger("transformers.modeling_utils").warning("Some weights were not used\nsecond line")
        logging.getLogger("timm.models").info("not a warning: dropped")
        warnings.warn("a deprecated thing", FutureWarning)
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    assert logging.getLogger("transformers").handlers == before
    lines = [EVENT_FIELDS.search(ln) for ln in stream.getvalue().splitlines() if " featx warning " in ln]
    assert [m.groups() for m in lines] == [("transformers.modeling_utils", "Some weights were not used"),
                                           ("FutureWarning", "a deprecated thing")], stream.getvalue()
    assert "dropped" not in stream.getvalue()

