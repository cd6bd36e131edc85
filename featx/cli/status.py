"""``featx status``: per model done / stale / failed / missing / corrupt, from one store listing.
``stale``: committed, but with other inputs than these options name (``featx extract`` redoes it)."""

from __future__ import annotations

import argparse
import json
import sys

from featx.cli.options import add_selection, add_store, open_store_from, unique_models
from featx.flags import flag
from featx.pipeline.request import add_data_options, add_weight_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show which models are committed in a store")
    add_selection(p, default="the models the store holds for --dataset/--subset")
    add_data_options(p)
    add_store(p)
    add_weight_options(p.add_argument_group("what extract was (or will be) run with"))
    flag(p, "json", action="store_true")
    flag(p, "verify", action="store_true",
         help="also read every committed data object and check its sha256 (finds bit rot a listing cannot see)")
    k = p.add_argument_group("cluster (adds each model's Job, attempt and phase)")
    flag(k, "namespace", default=None, help="namespace of the release's Jobs")
    flag(k, "release", default=None, help="Helm release name (featx.io/release label)")
    flag(k, "kubeconfig", default=None)
    p.set_defaults(run=run)


def model_states(args: argparse.Namespace) -> list[dict]:
    """One row per selected model: id, key, state, reason, attempts (pure over a store scan)."""
    from featx.catalog import resolve
    from featx.pipeline.request import RunRequest, judge_model
    from featx.pipeline.stored import describe, stored_models, verified

    request = RunRequest.from_args(args)
    store = open_store_from(args)
    store.check()
    states = store.scan(request.scan_prefix)
    if args.modelset or args.models:
        specs = resolve(args.modelset, unique_models(args), args.modality)
    else:
        specs = stored_models(states, request, args.modality)
        print(f"featx status: {describe(specs, request)}", file=sys.stderr)
    keys = [request.key(spec) for spec in specs]
    if getattr(args, "verify", False):
        states = verified(store, states, [k.stem for k in keys])
    rows = []
    for spec, key in zip(specs, keys):
        st = judge_model(states, request, spec)
        rows.append({"id": spec.id, "modality": spec.modality, "state": st.state, "reason": st.reason,
                     "attempts": st.failure.attempt if st.failure else 0, "key": key.data, "stem": key.stem,
                     "shards": f"{st.shards[0]}/{st.shards[1]}" if st.shards else None})
    if getattr(args, "release", None) or getattr(args, "namespace", None):
        from featx.kube.status import job_rows

        rows = job_rows(rows, args.namespace, args.release or "featx", args.kubeconfig)
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_states(args)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(r["id"]) for r in rows), default=10)
        for r in rows:
            extra = f"  attempts={r['attempts']}" if r["attempts"] else ""
            if r.get("job"):
                extra += f"  job={r['job']} ({r['phase']})"
            print(f"{r['id'].ljust(width)}  {r['state']:<8}{extra}  {r['reason']}".rstrip())
        states = ("done", "stale", "failed", "missing", "corrupt") + (("running", "pending") if any("job" in r for r in rows) else ())
        counts = {s: sum(r["state"] == s for r in rows) for s in states}
        print("  ".join(f"{k}={v}" for k, v in counts.items()))
    return 0
