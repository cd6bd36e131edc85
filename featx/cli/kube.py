"""``featx render`` and ``featx reconcile``: the Kubernetes side of a run.

Both read the chart's ConfigMap (``run.yaml``): rendered by ``helm template`` from the chart's
values (``-f`` + ``--set``), or given as ``--config run.yaml`` / ``--configmap NAME``.
"""

from __future__ import annotations

import argparse
import sys

from featx.flags import flag

RENDER_EXAMPLES = """examples:
  featx render --modelset smoke
  featx render -f my-values.yaml --set concurrency=20 > jobs.yaml
  featx render --models gpt2 meta-llama/Llama-2-70b-hf --set kueue.queueName=gpu
"""

RECONCILE_EXAMPLES = """examples:
  featx reconcile --configmap featx-run --namespace research           # one pass from your laptop
  featx reconcile --watch --config /etc/featx/run.yaml                 # what the chart's controller runs
  featx reconcile -f my-values.yaml --release featx --dry-run          # what would it do?
"""


def _add_values(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chart values (rendered with `helm template`; $FEATX_HELM, the helm beside featx, or PATH)")
    g.add_argument("-f", "--values", action="append", default=[], metavar="FILE", help="values file (repeatable)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="value override (repeatable, helm syntax)")
    flag(g, "chart", default=None, help="path of the featx chart (default: helm/featx of this checkout)")
    flag(g, "release", default=None, help="Helm release name (default: featx, or the run config's)")
    flag(g, "namespace", default=None, help="namespace of the Jobs (default: the run config's, in-cluster, kubeconfig)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="print a run's Job manifests as YAML (runs helm template; no cluster needed)",
                       epilog=RENDER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(p, "modelset", help="overrides the values' modelset: a built-in name")
    flag(p, "models", nargs="+", metavar="ID", help="overrides the values' modelset: these ids")
    flag(p, "modality", choices=["all", "language", "vision"], default=None)
    _add_values(p)
    flag(p, "config", default=None, help="a rendered run.yaml (the chart's ConfigMap) instead of values")
    p.set_defaults(run=run_render)

    c = sub.add_parser("check", help="is the store reachable and writable, and the controller ready? "
                                     "(what `helm test` runs)")
    flag(c, "store", required=True, help="s3://bucket/prefix or a directory: checked with a probe write")
    flag(c, "ready_url", default=None, metavar="URL",
         help="the controller's /readyz, e.g. http://featx:8080/readyz (default: not checked)")
    flag(c, "timeout", type=float, default=10.0, help="seconds to wait for each answer (default 10)")
    c.set_defaults(run=run_check)

    r = sub.add_parser("reconcile", help="create, retry and clean up the per-model Jobs of a run",
                       epilog=RECONCILE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = r.add_argument_group("run settings (one of)")
    flag(src, "config", default=None, help="run.yaml of the chart's ConfigMap (the controller mounts it)")
    flag(src, "configmap", default=None, help="read run.yaml from this ConfigMap in the namespace")
    _add_values(r)
    k = r.add_argument_group("cluster and store")
    flag(k, "kubeconfig", default=None, help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    flag(k, "context", default=None, help="kubeconfig context")
    flag(k, "s3_endpoint", default=None, help="S3 endpoint URL (overrides AWS_ENDPOINT_URL)")
    w = r.add_argument_group("how")
    flag(w, "watch", action="store_true", help="keep reconciling every --interval seconds")
    flag(w, "interval", type=float, default=None, help="seconds between passes (default: the run config's)")
    flag(w, "dry_run", action="store_true", help="log the decisions, create and delete nothing")
    flag(w, "log_format", choices=["text", "json"], default="text")
    h = r.add_argument_group("health (the chart's probes)")
    flag(h, "request_timeout", type=float, default=30.0, metavar="S",
         help="seconds to wait for any one Kubernetes API or S3 response before the pass fails (default 30)")
    flag(h, "health_port", type=int, default=None, metavar="PORT",
         help="with --watch: serve /healthz (a pass completed lately), /readyz (and it had no error) and "
              "Prometheus /metrics on PORT")
    flag(h, "health_host", default="0.0.0.0", metavar="ADDR", help="address of the health endpoint (default 0.0.0.0)")
    flag(h, "fail_after_intervals", type=int, default=None, metavar="N",
         help="/healthz fails after N intervals without a completed pass (default 3)")
    r.set_defaults(run=run_reconcile)


def _config_from_values(args: argparse.Namespace, overrides: list[str]):
    from featx.kube.config import RunConfig
    from featx.kube.helm import render_run_config

    return RunConfig.from_dict(render_run_config(args.chart, args.values, list(args.set) + overrides,
                                                 args.release or "featx", args.namespace or "default"))


def run_render(args: argparse.Namespace) -> int:
    import yaml

    from featx.kube.config import RunConfig
    from featx.kube.jobs import render_job
    from featx.kube.rowcount import count_rows
    from featx.plan.sizing import choose

    overrides = []
    if args.models:
        overrides.append("modelset={" + ",".join(m.replace(",", "\\,") for m in args.models) + "}")
    elif args.modelset:
        overrides.append(f"modelset={args.modelset}")
    if args.modality:
        overrides.append(f"modality={args.modality}")
    if args.config:
        config = RunConfig.load(args.config)
    else:
        config = _config_from_values(args, overrides)
    docs = []
    num_rows = count_rows(config.request).rows if config.sharding.rows_per_shard else None
    for d in config.desired(num_rows):
        sizing = choose(d.spec, config.classes, config.request.qlora, batch_size=config.batch_size)
        if not sizing.fits:
            print(f"featx: warning: {d.id}: not rendered: {sizing.reason}", file=sys.stderr)
            continue
        docs.append(render_job(config, d, sizing, 1, tuple(range(d.layout.num_shards)) if d.layout else ()))
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120))
    return 0


def run_check(args: argparse.Namespace) -> int:
    """One line per check; the first that fails raises featx's one-line error (exit non-zero).
    Credentials come from the environment (the chart's Secret) and are never printed."""
    import urllib.error
    import urllib.request

    from featx.errors import TransientError
    from featx.store import open_store

    store = open_store(args.store, connect_timeout=args.timeout, read_timeout=args.timeout)
    store.check(write=True)
    print(f"ok  store {args.store}: reachable and writable")
    if args.ready_url:
        try:
            with urllib.request.urlopen(args.ready_url, timeout=args.timeout) as r:
                said = r.read().decode(errors="replace").strip()
        except urllib.error.HTTPError as e:
            said = e.read().decode(errors="replace").strip()
            raise TransientError(f"the controller is not ready ({args.ready_url}: {e.code}): {said}; "
                                 "see its log (kubectl logs deploy/<release>)") from e
        except (urllib.error.URLError, OSError) as e:
            raise TransientError(f"cannot reach the controller at {args.ready_url} ({getattr(e, 'reason', e)}); "
                                 "is its pod running (kubectl get pods)?") from e
        print(f"ok  controller {args.ready_url}: {said}")
    return 0


def run_reconcile(args: argparse.Namespace) -> int:
    from featx.errors import UsageError
    from featx.kube.client import KubeClient, Timeouts
    from featx.kube.config import RunConfig
    from featx.kube.controller import STORE_RETRIES, WRITE_WORKERS, Controller
    from featx.kube.health import FAIL_AFTER_INTERVALS, Health, serve
    from featx.logs import EventLog
    from featx.store import open_store
    from featx.yamlfile import load_yaml

    if args.config and args.configmap:
        raise UsageError("give either --config or --configmap, not both")
    timeouts = Timeouts(read=args.request_timeout)
    kube = KubeClient.connect(args.namespace, args.kubeconfig, args.context, timeouts, WRITE_WORKERS)
    if args.config:
        config = RunConfig.load(args.config)
    elif args.configmap:
        config = RunConfig.from_dict(load_yaml(kube.read_run_config(args.configmap), f"ConfigMap {args.configmap}"))
    else:
        config = _config_from_values(args, [])
    if args.namespace is None and args.config:
        kube.namespace = config.namespace  # the release's namespace, unless told otherwise
    options = {"endpoint_url": args.s3_endpoint} if args.s3_endpoint else {}
    store = open_store(config.store, connect_timeout=timeouts.connect, read_timeout=timeouts.read,
                       retries=STORE_RETRIES, **options)
    controller = Controller(config, kube, store, EventLog(args.log_format), workers=WRITE_WORKERS)
    if args.watch:
        interval = config.interval_s if args.interval is None else args.interval
        health = Health((args.fail_after_intervals or FAIL_AFTER_INTERVALS) * interval)
        if args.health_port is not None:
            serve(health, args.health_port, args.health_host, metrics=controller.metrics)
        return controller.watch(interval, health=health)
    result = controller.run_once(dry_run=args.dry_run)
    return 1 if result.errors else 0
