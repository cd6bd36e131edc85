"""Log lines people can act on: real ``featx extract`` runs, checked against the format that
docs/troubleshooting.md documents (its events table is parsed, so the page and the code cannot drift).

One subprocess run (text, a failing model before a good one: what ``kubectl logs`` shows, nothing
but event lines on stderr) and a few in-process runs (JSON; failures that need no model load).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, run_cli, run_featx

DOC = REPO / "docs" / "troubleshooting.md"
GOOD = "featx-smoke/gpt2"
MISSING_TIMM = "vit_does_not_exist_patch16_224"  # a timm-style name timm does not have: permanent, offline
MISSING_HUB = "does-not/exist-model"
ROWS = 8
COMMON = ["--dataset", "featx-sample", "--num_samples", str(ROWS)]

TS = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
TEXT_LINE = re.compile(rf'^(?P<ts>{TS}) featx (?P<event>[a-z][a-z_-]*)'
                       rf'(?P<fields>(?: [a-z_][a-z0-9_]*=(?:"(?:[^"\\]|\\.)*"|[^\s"]\S*))*)$')
TEXT_FIELD = re.compile(r' ([a-z_][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')
RETRY = {"permanent": "no (permanent)", "transient": "yes", "oom": "on a larger GPU"}  # as documented
END_EVENTS = ("committed", "failed")


@dataclass
class Event:
    name: str
    fields: dict[str, Any]
    keys: list[str]  # field names in the order written
    line: str


def documented_events() -> dict[str, list[str]]:
    """The events table of docs/troubleshooting.md: event -> its fields, in order (an optional field
    is written `name`? and appears only when it has a value)."""
    text = DOC.read_text()
    table = text.split("<!-- events:extract -->")[1].split("<!-- /events:extract -->")[0]
    events, optional = {}, {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([a-z-]+)`", cells[0]) if cells else None
        if m:
            events[m[1]] = re.findall(r"`([a-z_][a-z0-9_]*)`\??", cells[1])
            optional[m[1]] = set(re.findall(r"`([a-z_][a-z0-9_]*)`\?", cells[1]))
    assert events, f"{DOC}: no events table between the <!-- events:extract --> markers"
    return {name: Fields(fields, optional[name]) for name, fields in events.items()}


@dataclass
class Fields:
    """An event's documented fields, in order, and which of them may be left out."""
    names: list[str]
    optional: set[str]

    def admits(self, keys: list[str]) -> bool:
        return keys == [k for k in self.names if k in keys] and set(self.names) - set(keys) <= self.optional


def _text_value(raw: str) -> Any:
    if raw.startswith('"'):
        return json.loads(raw)  # a text with spaces, JSON-quoted
    try:
        return json.loads(raw)  # numbers, lists, objects
    except ValueError:
        return raw  # a bare word


def parse(stream: str, fmt: str) -> list[Event]:
    """Every non-empty line must be an event line of the documented format."""
    events = []
    for line in stream.splitlines():
        if not line.strip():
            continue
        if fmt == "text":
            m = TEXT_LINE.match(line)
            assert m, f"not a documented text log line: {line!r}"
            pairs = [(k, _text_value(v)) for k, v in TEXT_FIELD.findall(m["fields"])]
            events.append(Event(m["event"], dict(pairs), [k for k, _ in pairs], line))
        else:
            obj = json.loads(line)
            assert list(obj)[:2] == ["ts", "event"], f"JSON log line must start with ts, event: {line}"
            assert re.fullmatch(TS, obj["ts"]), line
            keys = list(obj)[2:]
            events.append(Event(obj["event"], {k: obj[k] for k in keys}, keys, line))
    return events


def check_run(events: list[Event], models: list[str], out_dir: Path) -> dict[str, Event]:
    """The documented shape: per model start, progress..., committed|failed; one summary last.
    Returns each model's last line."""
    documented = documented_events()
    for e in events:
        assert e.name in documented, f"event {e.name!r} is not documented in {DOC.name}: {e.line}"
        assert documented[e.name].admits(e.keys), f"{e.name} fields {e.keys} != documented {documented[e.name]}"
    assert events and events[0].name == "start", "the log starts with a start line"
    assert events[-1].name == "summary", "the log ends with a summary line"
    ends: dict[str, Event] = {}
    body = events[:-1]
    for model in models:
        assert body and body[0].name == "start", f"{model}: expected start, got {body[0].line if body else 'nothing'}"
        start = body.pop(0)
        f = start.fields
        assert f["model"] == model and f["attempt"] == 1 and f["gpu_class"] in ("cpu", "cuda")  # no --gpu_class: the device
        assert set(f["batch_plan"]) == {"batch_size", "token_budget"}, f["batch_plan"]
        assert f["dataset"].startswith("featx-sample@") and f["rows"] == ROWS
        assert str(f["store"]).startswith(str(out_dir)), "store: where the features will be committed"
        progress = []
        while body and body[0].name == "progress":
            progress.append(body.pop(0))
        assert body and body[0].name in END_EVENTS, f"{model}: the model's log ends with committed or failed"
        end = body.pop(0)
        assert end.fields["model"] == model
        if end.name == "committed":
            assert progress, f"{model}: at least one progress line"
            for p in progress:
                assert re.fullmatch(rf"\d+/{ROWS}", p.fields["done"]) and p.fields["samples_per_s"] >= 0
                assert p.fields["eta_s"] >= 0
            assert progress[-1].fields["done"] == f"{ROWS}/{ROWS}"
            assert end.fields["where"] == f["store"] and Path(end.fields["where"]).is_file()
            assert end.fields["seconds"] > 0 and end.fields["shape"][0] == ROWS
            assert re.fullmatch(r"[0-9a-f]{16}", str(end.fields["sha256"]))
        else:
            assert end.fields["reason"] and end.fields["attempt"] == 1
            assert end.fields["retry"] == RETRY[end.fields["kind"]], end.line
        ends[model] = end
    assert not body, f"unexpected lines: {[e.line for e in body]}"
    summary = dict(events[-1].fields)
    failed = [e for e in ends.values() if e.name == "failed"]
    failures = summary.pop("failures", None)
    assert summary == {"committed": sum(e.name == "committed" for e in ends.values()), "skipped": 0,
                       "failed": len(failed)}
    if failed:  # the summary names every failure's reason (clipped), so one line says what went wrong
        assert failures and all(e.fields["reason"][:40] in failures for e in failed), failures
    else:
        assert failures is None
    return ends


def expected_exit(ends: dict[str, Event]) -> int:
    """featx's exit code contract (docs/troubleshooting.md, "Exit codes")."""
    kinds = {e.fields["kind"] for e in ends.values() if e.name == "failed"}
    if not kinds:
        return 0
    return 1 if "transient" in kinds else (4 if "oom" in kinds else 3)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory):
    """What a Job's log shows: a model that cannot exist, then a good one, as a subprocess."""
    out = tmp_path_factory.mktemp("logs-text")
    models = [MISSING_TIMM, GOOD]
    result = run_featx("extract", "--models", *models, *COMMON, "--output_dir", str(out),
                       env={"FEATX_NUM_WORKERS": "0"}, timeout=900)
    return result, models, out


def test_text_log_of_a_run_with_a_failing_and_a_good_model(text_run):
    result, models, out = text_run
    ends = check_run(parse(result.err, "text"), models, out)  # stderr holds nothing but event lines
    assert ends[MISSING_TIMM].name == "failed" and ends[MISSING_TIMM].fields["kind"] == "permanent"
    assert ends[MISSING_TIMM].fields["retry"] == "no (permanent)"
    assert MISSING_TIMM in ends[MISSING_TIMM].fields["reason"]
    assert ends[GOOD].name == "committed"
    assert result.code == 3 == expected_exit(ends), result.err
    # text mode also prints the summary table on stdout
    assert re.search(rf"^{re.escape(GOOD)}\s+committed\b", result.out, re.M), result.out
    assert re.search(rf"^{re.escape(MISSING_TIMM)}\s+failed\b", result.out, re.M), result.out


def test_text_reason_with_spaces_is_one_quoted_value(text_run):
    result, _, _ = text_run
    failed = next(line for line in result.err.splitlines() if " featx failed " in line)
    assert ' retry="no (permanent)"' in failed and ' reason="' in failed


def test_json_log_of_a_successful_run_then_a_skip(tmp_path: Path):
    r = run_cli("extract", "--models", GOOD, *COMMON, "--output_dir", str(tmp_path), "--log_format", "json")
    ends = check_run(parse(r.err, "json"), [GOOD], tmp_path)
    assert ends[GOOD].name == "committed" and r.code == 0 == expected_exit(ends), r.err
    assert r.out == "", "JSON mode prints nothing but the log (on stderr)"

    again = parse(run_cli("extract", "--models", GOOD, *COMMON, "--output_dir", str(tmp_path),
                          "--log_format", "json").err, "json")
    documented = documented_events()
    assert [e.name for e in again] == ["skipped", "summary"]
    assert documented["skipped"].admits(again[0].keys) and again[0].fields["where"] == ends[GOOD].fields["where"]
    assert again[1].fields == {"committed": 0, "skipped": 1, "failed": 0}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_failing_run_ends_with_failed_reason_and_retry(fmt: str, tmp_path: Path):
    """A model that is not on disk and not reachable (the suite runs with HF_HUB_OFFLINE=1) and one
    timm does not know: each ends with one failed line saying whether it will be retried."""
    models = [MISSING_HUB, MISSING_TIMM]
    r = run_cli("extract", "--models", *models, *COMMON, "--output_dir", str(tmp_path), "--log_format", fmt)
    ends = check_run(parse(r.err, fmt), models, tmp_path)
    assert all(e.name == "failed" for e in ends.values())
    assert ends[MISSING_TIMM].fields["kind"] == "permanent"
    assert ends[MISSING_HUB].fields["kind"] in RETRY and MISSING_HUB in ends[MISSING_HUB].fields["reason"]
    assert r.code == expected_exit(ends), r.err
    assert not list(tmp_path.rglob("*.pt")), "a failed model leaves no feature file"


def test_permanent_failure_alone_exits_3(tmp_path: Path):
    r = run_cli("extract", "--models", MISSING_TIMM, *COMMON, "--output_dir", str(tmp_path), "--log_format", "json")
    ends = check_run(parse(r.err, "json"), [MISSING_TIMM], tmp_path)
    assert ends[MISSING_TIMM].fields["retry"] == "no (permanent)" and r.code == 3


def test_documented_example_lines_parse():
    """The text examples in docs/troubleshooting.md are themselves valid log lines."""
    examples = [ln for ln in DOC.read_text().splitlines() if re.match(rf"{TS} featx ", ln)]
    assert len(examples) >= 5
    documented = documented_events()
    for e in parse("\n".join(examples), "text"):
        assert documented[e.name].admits(e.keys), e.line
