"""``featx models``: list a modelset, check its ids against the hub, show GPU sizing."""

from __future__ import annotations

import argparse
import json

from featx.cli.options import add_selection
from featx.flags import flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the models of a modelset")
    add_selection(p)
    flag(p, "json", action="store_true", help="print a JSON list")
    flag(p, "check", action="store_true", help="check every id on the hub (needs network) before a long run")
    flag(p, "sizing", action="store_true", help="show estimated GPU memory and the GPU class each model gets")
    p.set_defaults(run=run)


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n) if n else "-"


def run(args: argparse.Namespace) -> int:
    from featx.catalog import resolve

    specs = resolve(args.modelset, args.models, args.modality)
    if args.check:
        from featx.catalog.check import check_models
        from featx.catalog.hub import HubAdapter

        results = check_models(specs, HubAdapter())
        if args.json:
            print(json.dumps([r.__dict__ for r in results], indent=2))
        else:
            for r in results:
                print(f"{'ok  ' if r.ok else 'FAIL'}  {r.id}{'  (gated)' if r.gated else ''}  {r.reason}  {r.fix}".rstrip())
        return 0 if all(r.ok for r in results) else 1
    if args.sizing:
        from featx.kube.sizing_table import sizing_rows

        rows = sizing_rows(specs)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            keys = list(rows[0]) if rows else []
            print("\t".join(keys))
            for r in rows:
                print("\t".join(str(r[k]) for k in keys))
        return 0
    if args.json:
        print(json.dumps([{"id": s.id, "modality": s.modality, "family": s.family, "params": s.params,
                           "arch": s.arch, "layers": s.layers, "hidden": s.hidden, "gated": s.gated,
                           "trust_remote_code": s.trust_remote_code, "default_pool": s.pool_for(None)}
                          for s in specs], indent=2))
        return 0
    width = max((len(s.id) for s in specs), default=10)
    fam = max((len(s.family) for s in specs), default=10)
    print(f"{'id'.ljust(width)}  modality  {'family'.ljust(fam)}   params  notes")
    for s in specs:
        notes = ", ".join(n for n, on in (("gated", s.gated), ("trust_remote_code", s.trust_remote_code),
                                          ("no class token: pool avg", not s.class_token)) if on)
        print(f"{s.id.ljust(width)}  {s.modality:<8}  {s.family.ljust(fam)}  {_human(s.params):>7}  {notes}")
    return 0
