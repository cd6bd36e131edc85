"""The controller's Prometheus metrics over the fake adapter and a real local store, read back by
Prometheus' own text parser from the HTTP endpoint. Against a real API server, compared with
``featx status``: tests/integration/test_reconcile_cluster.py."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from featx.kube.controller import Controller
from featx.kube.health import Health, serve
from featx.logs import EventLog
from featx.store.local import LocalStore
from tests.test_kube_reconcile import FakeKube, commit, config, run_yaml  # noqa: F401 - the fixtures


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_models_and_the_decisions_that_acted(config, tmp_path):  # noqa: F811
    kube, store = FakeKube(), LocalStore(tmp_path / "store")
    wall = iter(range(1_000, 2_000))
    ctl = Controller(config, kube, store, EventLog("json"))
    ctl.metrics.clock = lambda: float(next(wall))
    server = serve(Health(60), 0, "127.0.0.1", metrics=ctl.metrics)
    try:
        port = server.server_address[1]
        gpt2, vit, opt = ctl.desired
        ctl.run_once()  # gpt2 and vit created, opt waits (concurrency 2)
        names = sorted(kube.jobs)
        commit(store, gpt2, tmp_path)
        kube.finish(next(n for n in names if "gpt2" in n), ok=True)
        kube.finish(next(n for n in names if "vit" in n), ok=False, code=1)
        ctl.run_once()  # vit retried, opt created
        kube.finish(next(n for n in kube.jobs if "vit" in n and n.endswith("-a2")), ok=False, code=1)
        ctl.run_once()  # vit gives up (attempts 2)
        ctl.run_once()  # nothing new
        got = scrape(port)
    finally:
        server.shutdown()

    models = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "featx_models"}
    # as of the last pass's observation: gpt2 committed, vit's failure recorded, opt's Job pending
    assert models == {"done": 1, "failed": 1, "pending": 1, "stale": 0, "running": 0, "missing": 0, "corrupt": 0}
    counters = {(k[0], dict(k[1])["reason"]): v for k, v in got.items() if k[0].endswith("_total")}
    assert counters == {("featx_jobs_created_total", "Created"): 3, ("featx_jobs_retried_total", "transient"): 1,
                        ("featx_models_given_up_total", "attempts"): 1}
    assert {dict(k[1])["gpu_class"] for k in got if k[0].endswith("_total")} == {"l4-24gb"}
    assert got[("featx_reconcile_pass_seconds_count", ())] == 4
    assert got[("featx_reconcile_last_success_timestamp_seconds", ())] == 1003.0  # the 4th pass's end
