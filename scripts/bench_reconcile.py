#!/usr/bin/env python
"""Scale benchmark of ``featx reconcile``: the ``exhaustive`` modelset (139 models) against a real
control plane with 50+ fake GPU nodes (kwok) and the S3 store on a real SeaweedFS (loopback).
Reports, per pass, its wall time, the API calls it made (counted by a wrapper around featx's
Kubernetes adapter) and the S3 requests, plus the pure ``decide`` time.

Passes:
  1. cold: nothing exists -> one Job per model (concurrency is set above the model count);
  2. steady: every Job active -> nothing to do (one list call);
  3. half done: half the models committed in the store and their Jobs Complete -> cleanup deletes.

Usage: python scripts/bench_reconcile.py [--nodes 52] [--out bench/results/reconcile.json]
Builds/starts the control plane with localcluster/controlplane.py (binaries from
scripts/build-control-plane.sh) and SeaweedFS with tests/fixtures/seaweedfs.py. Not a timed
test: the results file (with the machine, its load average, the commit and the command) is
what the README quotes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from featx.kube.client import KubeClient  # noqa: E402
from featx.kube.config import RunConfig  # noqa: E402
from featx.kube.controller import WRITE_WORKERS, Controller, settings_for  # noqa: E402
from featx.kube.observe import observe  # noqa: E402
from featx.kube.reconcile import decide  # noqa: E402
from featx.kube.helm import render_run_config  # noqa: E402
from featx.logs import EventLog  # noqa: E402
from featx.store import Manifest, Store, open_store  # noqa: E402
from bench.seaweedfs import count_calls, run_seaweedfs  # noqa: E402
from bench.machine import RESULTS, provenance, write_results  # noqa: E402


class CountingKube:
    """The adapter with every call counted and timed."""

    def __init__(self, inner: KubeClient):
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):
            return fn

        def counted(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls[name] += 1
                self.seconds[name] += time.perf_counter() - t0
        return counted

    def reset(self) -> None:
        self.calls.clear()
        self.seconds.clear()


def fake_commit(store: Store, d, tmp: Path) -> None:
    data = tmp / "f.pt"
    data.write_bytes(d.id.encode())
    m = Manifest(**{**asdict(d.identity), "rows_fingerprint": "bench", "num_rows": 1},
                 modality=d.spec.modality, sha256=hashlib.sha256(d.id.encode()).hexdigest(),
                 size=len(d.id.encode()), shape=[1, 1, 1], dtype="float32", featx_version="bench")
    store.commit(d.key, data, m)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=52, help="fake GPU nodes (at least 50)")
    ap.add_argument("--workers", type=int, default=WRITE_WORKERS, help="API writes in flight at once")
    ap.add_argument("--repeat", type=int, default=3, help="cold passes, each in a fresh namespace (median, min, max)")
    ap.add_argument("--out", default=str(RESULTS / "reconcile.json"), help="results file")
    args = ap.parse_args()

    from kubernetes import client

    from localcluster.controlplane import (GPU_1X24GB, GPU_4X40GB, GPU_8X80GB, GpuNodeClass, add_gpu_nodes,
                                            create_namespace, start_cluster, wait_until)
    from dataclasses import replace

    results: dict[str, Any] = {**provenance(), "bench": "reconcile", "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="featx-bench-") as tmpdir, run_seaweedfs(bucket="featx-bench") as sw:
        tmp = Path(tmpdir)
        os.environ.update(sw.env())
        t0 = time.perf_counter()
        cluster = start_cluster(tmp / "k8s")
        results["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        try:
            api = cluster.api_client()
            n141 = max(1, args.nodes // 13)
            n80 = max(1, args.nodes * 4 // 13)
            n40 = max(1, args.nodes * 4 // 13)
            n24 = max(1, args.nodes - n141 - n80 - n40)
            h200 = GpuNodeClass("gpu-8x141gb", gpus=8, gpu_memory_mib=143771, product="NVIDIA-H200", count=n141)
            t0 = time.perf_counter()
            nodes = add_gpu_nodes(api, [h200, replace(GPU_8X80GB, count=n80), replace(GPU_4X40GB, count=n40),
                                        replace(GPU_1X24GB, count=n24)], timeout=120)
            results["nodes"] = {"total": len(nodes), "8x141GB": n141, "8x80GB": n80, "4x40GB": n40, "1x24GB": n24,
                                "ready_s": round(time.perf_counter() - t0, 2)}
            sets = ["modelset=exhaustive", "concurrency=1000", "controller.replicas=0",
                    f"s3.bucket={sw.bucket}", f"s3.endpoint={sw.endpoint}"]

            def setup(ns: str) -> tuple[RunConfig, Store, dict[str, int], CountingKube, Controller]:
                """A fresh controller (new connections, empty manifest cache) over namespace ``ns``."""
                config = RunConfig.from_dict(render_run_config(sets=sets, release="bench", namespace=ns))
                store = open_store(config.store, manifest_cache=tmp / f"manifest-cache-{ns}")
                kube = CountingKube(KubeClient(api, ns, parallel=args.workers))
                controller = Controller(config, kube, store, EventLog("json", io.StringIO()), workers=args.workers)
                return config, store, count_calls(store), kube, controller

            def one_pass(name: str) -> dict[str, Any]:
                kube.reset()
                s3_calls.clear()
                t, cpu = time.perf_counter(), time.process_time()
                r = controller.run_once()
                row = {"seconds": round(time.perf_counter() - t, 3),
                       "controller_cpu_s": round(time.process_time() - cpu, 3),  # all its threads
                       "api_calls": sum(kube.calls.values()),
                       "calls": dict(kube.calls), "api_seconds": round(sum(kube.seconds.values()), 3),
                       "s3_requests": dict(s3_calls), "loadavg_1m": round(os.getloadavg()[0], 2),
                       **{k: v for k, v in r.summary().items() if k != "seconds"}}
                print(f"{name}: {json.dumps(row)}", file=sys.stderr)
                return row

            # cold passes, each in a namespace of its own; the earlier one's Jobs and pods are
            # deleted first (pods forcibly: fake nodes have no kubelet to confirm), freeing the GPUs
            core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
            cold: list[dict[str, Any]] = []
            for i in range(args.repeat):
                if i:
                    batch.delete_collection_namespaced_job(ns, propagation_policy="Orphan")

                    def pods_gone() -> bool:  # again and again: the Job controller may still be making some
                        core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
                        return not core.list_namespaced_pod(ns).items
                    wait_until(pods_gone, 300, f"pods of {ns} gone", interval=1.0)
                ns = create_namespace(api, f"bench-{i}")
                config, store, s3_calls, kube, controller = setup(ns)
                cold.append(one_pass(f"pass1_cold[{i}]"))
            seconds = sorted(r["seconds"] for r in cold)
            results["store"] = config.store + " (SeaweedFS, loopback)"
            results["models"] = len(controller.desired)
            results["pass1_cold"] = {"seconds_median": seconds[len(seconds) // 2], "seconds_min": seconds[0],
                                     "seconds_max": seconds[-1], "runs": cold}
            desired = controller.desired

            def scheduled() -> bool:
                pods = core.list_namespaced_pod(ns).items
                return len(pods) >= len(desired) and all(p.spec.node_name for p in pods)
            def why() -> str:
                pods = core.list_namespaced_pod(ns).items
                pending = [p for p in pods if not p.spec.node_name]
                detail = ""
                if pending:
                    conds = pending[0].status.conditions or []
                    detail = "; ".join(f"{c.type}: {c.message}" for c in conds)
                return f"every pod scheduled ({len(pods)} pods, {len(pending)} unscheduled; {detail})"
            t = time.perf_counter()
            wait_until(scheduled, 300, why, interval=1.0)
            results["all_pods_scheduled_s"] = round(time.perf_counter() - t, 2)
            results["pass2_steady"] = one_pass("pass2_steady")

            # half the models commit and their Jobs complete
            half = desired[::2]
            jobs = {j["metadata"]["annotations"]["featx.io/model-id"]: j["metadata"]["name"]
                    for j in kube.inner.list_jobs(controller.selector)}
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for d in half:
                fake_commit(store, d, tmp)
                pods = core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={jobs[d.id]}").items
                for p in pods:
                    core.patch_namespaced_pod_status(p.metadata.name, ns, {"status": {
                        "phase": "Succeeded", "containerStatuses": [{
                            "name": "extract", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                                     "finishedAt": now}}}]}})

            def complete() -> bool:
                done = 0
                for j in batch.list_namespaced_job(ns).items:
                    if any(c.type == "Complete" and c.status == "True" for c in (j.status.conditions or [])):
                        done += 1
                return done >= len(half)
            wait_until(complete, 300, "half the Jobs Complete", interval=1.0)
            results["pass3_half_done"] = one_pass("pass3_half_done")

            # the pure decision alone, on the same inputs
            observed = observe(kube.inner.list_jobs(controller.selector))
            committed = store.scan(config.scan_prefix)
            settings = settings_for(config)
            t = time.perf_counter()
            for _ in range(10):
                decide(desired, committed, observed, settings)
            results["decide_only_ms"] = round((time.perf_counter() - t) / 10 * 1000, 2)
        finally:
            cluster.stop()
    write_results(Path(args.out), results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
