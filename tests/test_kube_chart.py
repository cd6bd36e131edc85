"""The Helm chart through the real ``helm`` binary (no cluster): lint, schema and cross-value
refusals (by helm and by ``featx render``, which runs helm), a security policy over every rendered
pod (the checks checkov's Kubernetes policies make), minimal RBAC, and ``featx render`` printing
the Jobs the controller makes from helm's ConfigMap.

helm comes from $FEATX_HELM, PATH, or scripts/build-control-plane.sh's cache (built on first use).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from featx.kube.client import VERBS
from featx.kube.config import RunConfig
from featx.kube.helm import CHART_DIR, KUBE_VERSION
from featx.kube.jobs import render_job
from featx.plan.sizing import choose
from tests.helpers import find_helm, run_cli

__all__ = ["CHART_DIR", "KUBE_VERSION", "find_helm"]  # the cluster tier installs the chart with these


def _classes(**changes) -> list[dict]:
    """The chart's gpuClasses with ``{index: {key: value}}`` changes (lists are replaced whole by
    helm, so a values file gives the full list)."""
    classes = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["gpuClasses"]
    for i, change in changes.items():
        classes[int(i[1:])].update(change)
    return classes


# name -> (a values file's content, a fragment every error message names)
BAD_VALUES = {
    "concurrency zero": ({"concurrency": 0}, "concurrency"),
    "attempts negative": ({"attempts": -1}, "attempts"),
    "unknown modality": ({"modality": "audio"}, "modality"),
    "unknown modelset": ({"modelset": "everything"}, "modelset"),
    "empty inline modelset": ({"modelset": []}, "modelset"),
    "pool not a pool": ({"pool": "mean"}, "pool"),
    "memory not a number": ({"gpuClasses": _classes(c2={"memoryMiB": "lots"})}, "memoryMiB"),
    "bad bucket name": ({"s3": {"bucket": "Bad_Bucket"}}, "bucket"),
    "endpoint not a URL": ({"s3": {"endpoint": "minio:9000"}}, "endpoint"),
    "unknown class key": ({"gpuClasses": _classes(c0={"memory": 5})}, "memory"),
    "negative caption index": ({"captionIdx": -1}, "captionIdx"),
    "duplicate class names": ({"gpuClasses": _classes(c3={"name": "l4-24gb"})}, "used twice"),
    "no class enabled": ({"gpuClasses": _classes(c2={"enabled": False}, c3={"enabled": False}, c4={"enabled": False},
                                                 c5={"enabled": False})}, "no class is enabled"),
    "MIG split over several slices": ({"gpuClasses": _classes(c1={"maxPerNode": 2})}, "MIG slice"),
    "plain HF_TOKEN in job.env": ({"job": {"env": [{"name": "HF_TOKEN", "value": "hf_abc"}]}}, "secretKeyRef"),
    "plain S3 secret key in job.env": ({"job": {"env": [{"name": "FEATX_NUM_WORKERS", "value": "2"},
                                                        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}},
                                       "job.env[1] AWS_SECRET_ACCESS_KEY has a plain value"),
    "plain password, lower case": ({"job": {"env": [{"name": "db_password", "value": ""}]}}, "secretKeyRef"),
    "credentials in the endpoint": ({"s3": {"endpoint": "http://ak:sk@minio:9000"}}, "endpoint"),
    "unknown networkPolicy key": ({"job": {"networkPolicy": {"egress": []}}}, "egress"),
    # key components: the rule of featx/keyparts.py, as values.schema.json's keyPath pattern
    "subset escapes the prefix": ({"subset": "../../x"}, "subset"),
    "dataset with an empty part": ({"dataset": "minhuh//prh"}, "dataset"),
    "prefix with ..": ({"s3": {"prefix": "/features/../x/"}}, "prefix"),
    "model id with ..": ({"modelset": ["gpt2", "org/../x"]}, "modelset"),
    "subset with a backslash": ({"subset": "a\\b"}, "subset"),
    "negative job TTL": ({"job": {"ttlSecondsAfterFinished": -1}}, "ttlSecondsAfterFinished"),
    "ServiceMonitor without the health port": (
        {"metrics": {"serviceMonitor": {"enabled": True}}, "controller": {"health": {"port": 0, "failAfterIntervals": 3}}},
        "metrics.serviceMonitor.enabled needs controller.health.port"),
    "Kueue priority without a queue": ({"kueue": {"priorityClassName": "featx-batch"}}, "without kueue.queueName"),
    "ServiceMonitor interval not a duration": ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
}


def template(helm: str, *args: str, release: str = "rel", namespace: str = "research",
             check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([helm, "template", release, str(CHART_DIR), "--namespace", namespace,
                           "--kube-version", KUBE_VERSION, *args], capture_output=True, text=True, check=check,
                          timeout=120)


def docs(helm: str, *args: str, **kw) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template(helm, *args, **kw).stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def values_file(tmp_path: Path, content: dict[str, Any], name: str = "v.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_lint_is_clean(helm):
    out = subprocess.run([helm, "lint", str(CHART_DIR), "--strict"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


def test_objects_names_and_labels(helm):
    objs = docs(helm)
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "Pod",
                                               "Role", "RoleBinding", "Service", "ServiceAccount"]
    for o in objs:
        meta = o["metadata"]
        assert meta["namespace"] == "research" and meta["name"].startswith("rel-featx")
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "featx.io/release"):
            assert key in meta["labels"], (o["kind"], key)
    (dep,) = by_kind(objs, "Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "featx", "app.kubernetes.io/instance": "rel",
                        "app.kubernetes.io/component": "controller"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["featx", "reconcile", "--watch"] and "/etc/featx/run.yaml" in c["command"]


def test_long_release_names_are_cut_to_63(helm):
    release = "r" * 53  # helm allows at most 53
    for o in docs(helm, release=release):
        assert len(o["metadata"]["name"]) <= 63 + len("-run") and not o["metadata"]["name"].endswith("-")
        assert all(len(v) <= 63 for v in o["metadata"]["labels"].values())


VALUE_SETS = {
    "defaults": {},
    "inline modelset, sample data, no keys": {"modelset": ["gpt2", "vit_base_patch16_224.augreg_in21k"],
                                              "dataset": "featx-sample", "subset": None, "numSamples": 8,
                                              "s3": {"credentialsSecret": {"name": ""}, "prefix": ""}},
    "everything set": {
        "modelset": "val", "modality": "language", "pool": "last", "captionIdx": 1, "qlora": True,
        "s3": {"endpoint": "http://seaweedfs.storage:8333", "region": "eu-west-1", "bucket": "feats", "prefix": "/a/b/"},
        "hfToken": {"secretName": "hf", "key": "token"},
        "modelCache": {"existingClaim": "hf-cache", "mountPath": "/models"},
        "kueue": {"queueName": "gpu-queue"}, "fullnameOverride": "fx", "imagePullSecrets": [{"name": "regcred"}],
        "image": {"tag": "dev", "pullPolicy": "Always"},
        "job": {"env": [{"name": "FEATX_NUM_WORKERS", "value": "8"}], "extraArgs": ["--format", "safetensors"],
                "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "spot", "operator": "Exists"}],
                "podAnnotations": {"a": "b"}, "priorityClassName": "batch", "serviceAccountName": "runner",
                "activeDeadlineSeconds": None},
    },
}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_featx_render_prints_the_controllers_jobs_from_helms_configmap(helm, tmp_path, name):
    """``featx render -f`` = the Jobs the controller makes from the ConfigMap helm renders."""
    f = values_file(tmp_path, VALUE_SETS[name])
    (cm,) = by_kind(docs(helm, "-f", f), "ConfigMap")
    config = RunConfig.from_dict(yaml.safe_load(cm["data"]["run.yaml"]))
    expected = []
    for d in config.desired():
        sizing = choose(d.spec, config.classes, config.request.qlora, batch_size=config.batch_size)
        if sizing.fits:
            expected.append(render_job(config, d, sizing, 1))
    r = run_cli("render", "-f", f, "--release", "rel", "--namespace", "research")
    assert r.code == 0, r.err
    assert [d for d in yaml.safe_load_all(r.out) if d] == expected and expected


def _pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the release creates: the controller's, `helm test`'s, and each rendered Job's."""
    specs = [(f"Deployment/{o['metadata']['name']}", o["spec"]["template"]["spec"]) for o in by_kind(objs, "Deployment")]
    specs += [(f"Pod/{o['metadata']['name']}", o["spec"]) for o in by_kind(objs, "Pod")]
    (cm,) = by_kind(objs, "ConfigMap")
    config = RunConfig.from_dict(yaml.safe_load(cm["data"]["run.yaml"]))
    for d in config.desired():
        sizing = choose(d.spec, config.classes, config.request.qlora)
        job = render_job(config, d, sizing, 1)
        specs.append((f"Job/{job['metadata']['name']}", job["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_security_policy(helm, tmp_path, name):
    """What checkov's CKV_K8S_* pod checks ask for, on every pod of the release."""
    objs = docs(helm, "-f", values_file(tmp_path, VALUE_SETS[name]))
    for where, pod in _pod_specs(objs):
        psc = pod.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True, where
        assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        assert not any("hostPath" in v for v in pod.get("volumes") or []), where
        for c in pod["containers"]:
            sc = c.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("privileged") in (None, False), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), where
            req = (c.get("resources") or {}).get("requests") or {}
            assert "cpu" in req and "memory" in req, where
            assert "memory" in (c.get("resources") or {}).get("limits", {}), where
            assert c["image"].split(":")[-1] not in ("", "latest"), where
            mounts = {m["mountPath"] for m in c.get("volumeMounts") or []}
            assert "/tmp" in mounts, where  # a writable /tmp under a read-only root
            for e in c.get("env") or []:  # secrets only by reference
                if any(s in e["name"] for s in ("SECRET", "TOKEN", "KEY")):
                    assert "valueFrom" in e and "value" not in e, (where, e["name"])
        if where.startswith("Job/"):
            assert pod["automountServiceAccountToken"] is False, where


def test_no_secret_values_in_the_configmap(helm, tmp_path):
    extra = [{"name": "FEATX_NUM_WORKERS", "value": "8"},
             {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}]
    objs = docs(helm, "--set", "s3.credentialsSecret.name=my-keys", "--set", "hfToken.secretName=hf",
                "-f", values_file(tmp_path, {"job": {"env": extra}}))
    (cm,) = by_kind(objs, "ConfigMap")
    text = cm["data"]["run.yaml"]
    assert "secretKeyRef" in text and "my-keys" in text
    run = yaml.safe_load(text)
    env = {e["name"]: e for e in run["jobTemplate"]["podSpec"]["containers"][0]["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "WANDB_API_KEY"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], name
    assert env["FEATX_NUM_WORKERS"] == extra[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policies_deny_ingress_and_select_the_controller_and_every_job(helm, tmp_path):
    objs = docs(helm)
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    assert set(policies) == {"controller", "extract"}
    (test,) = by_kind(objs, "Pod")  # `helm test`'s: the one ingress, to the health port
    assert policies["controller"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        **policies["controller"]["podSelector"]["matchLabels"], "app.kubernetes.io/component": "test"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert _matches(policies["controller"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
                    test["metadata"]["labels"])
    assert policies["extract"]["ingress"] == []
    for spec in policies.values():
        assert spec["policyTypes"] == ["Ingress", "Egress"]  # default deny ingress
        assert spec["egress"] == [{}]  # egress open by default (API server, S3, hub differ per cluster)
    (dep,) = by_kind(objs, "Deployment")
    assert _matches(policies["controller"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    assert not _matches(policies["extract"]["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    (cm,) = by_kind(objs, "ConfigMap")
    config = RunConfig.from_dict(yaml.safe_load(cm["data"]["run.yaml"]))
    for d in config.desired():  # the pods of the Jobs the controller renders
        pod_labels = render_job(config, d, choose(d.spec, config.classes, config.request.qlora), 1)["spec"]["template"]["metadata"]["labels"]
        assert _matches(policies["extract"]["podSelector"]["matchLabels"], pod_labels), d.id
        assert not _matches(policies["controller"]["podSelector"]["matchLabels"], pod_labels), d.id

    s3 = {"to": [{"ipBlock": {"cidr": "10.0.5.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    api = {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 6443, "protocol": "TCP"}]}
    values = {"job": {"networkPolicy": {"allowExternalEgress": False, "extraEgress": [s3]}},
              "controller": {"networkPolicy": {"allowExternalEgress": False, "extraEgress": [api, s3]}}}
    limited = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
               for p in by_kind(docs(helm, "-f", values_file(tmp_path, values)), "NetworkPolicy")}
    dns = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert limited["extract"]["egress"] == [dns, s3]
    assert limited["controller"]["egress"] == [dns, api, s3]
    off = docs(helm, "--set", "job.networkPolicy.enabled=false", "--set", "controller.networkPolicy.enabled=false")
    assert not by_kind(off, "NetworkPolicy")


def test_rbac_is_minimal_and_matches_what_the_client_calls(helm):
    objs = docs(helm)
    (role,) = by_kind(objs, "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == set(VERBS)
    assert not any("*" in x for t in granted for x in t)
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    (binding,) = by_kind(objs, "RoleBinding")
    (sa,) = by_kind(objs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "research"}]
    without = docs(helm, "--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                   "--set", "serviceAccount.name=existing")
    assert not by_kind(without, "Role") and not by_kind(without, "ServiceAccount")
    (dep,) = by_kind(without, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def _refused_by_featx(*args: str) -> str:
    r = run_cli("render", *args)
    assert r.code == 2 and not r.out, r.out[:500]
    assert r.err.count("\n") == 1 and "fix with -f FILE or --set" in r.err  # one line, with the fix
    return r.err


def test_probes_call_the_health_endpoint_the_command_serves(helm):
    from featx.cli.main import build_parser

    (dep,) = by_kind(docs(helm, "--set", "controller.health.port=9090"), "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(c["command"][1:])  # featx's own parser accepts the command
    assert (args.health_port, args.fail_after_intervals, args.request_timeout) == (9090, 3, 30.0)
    assert c["ports"] == [{"name": "health", "containerPort": 9090, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    (off,) = by_kind(docs(helm, "--set", "controller.health.port=0"), "Deployment")
    c = off["spec"]["template"]["spec"]["containers"][0]
    assert "--health_port" not in c["command"] and not {"ports", "livenessProbe", "readinessProbe"} & set(c)
    assert not by_kind(docs(helm, "--set", "controller.health.port=0"), "Service")


def test_metrics_port_in_the_service_and_an_optional_service_monitor(helm):
    objs = docs(helm, "--set", "controller.health.port=9090")
    (dep,) = by_kind(objs, "Deployment")
    (svc,) = by_kind(objs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "health", "protocol": "TCP"}]
    assert not by_kind(objs, "ServiceMonitor")  # off by default
    on = docs(helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=kps")
    (sm,) = by_kind(on, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "kps"
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]  # selects the Service (its labels)
    (svc_on,) = by_kind(on, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc_on["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["research"]}


def test_helm_test_pod_runs_featx_check_on_the_store_and_the_controller(helm):
    from featx.cli.main import build_parser

    objs = docs(helm, "--set", "controller.health.port=9090")
    (pod,) = by_kind(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    args = build_parser().parse_args(c["command"][1:])  # featx's own parser accepts the command
    (cm,) = by_kind(objs, "ConfigMap")
    assert args.store == yaml.safe_load(cm["data"]["run.yaml"])["store"]
    assert args.ready_url == "http://rel-featx:9090/readyz"
    (svc,) = by_kind(objs, "Service")
    assert svc["metadata"]["name"] == "rel-featx"
    (dep,) = by_kind(objs, "Deployment")
    assert [e for e in c["env"] if e["name"].startswith("AWS_")] == [
        e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"].startswith("AWS_")]
    assert not pod["spec"]["automountServiceAccountToken"]
    (idle,) = by_kind(docs(helm, "--set", "controller.replicas=0"), "Pod")  # no controller: the store only
    assert "--ready_url" not in idle["spec"]["containers"][0]["command"]


def test_jobs_carry_the_ttl_and_zero_means_none(helm, tmp_path):
    for args, want in (((), 3600), (("--set", "job.ttlSecondsAfterFinished=60"), 60),
                       (("--set", "job.ttlSecondsAfterFinished=0"), None)):
        (cm,) = by_kind(docs(helm, *args), "ConfigMap")
        config = RunConfig.from_dict(yaml.safe_load(cm["data"]["run.yaml"]))
        d = config.desired()[0]
        job = render_job(config, d, choose(d.spec, config.classes, False), 1)
        assert job["spec"].get("ttlSecondsAfterFinished") == want


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_values_are_refused_by_helm_and_featx_render(helm, tmp_path, name):
    override, fragment = BAD_VALUES[name]
    f = values_file(tmp_path, override)
    out = template(helm, "-f", f, check=False)
    assert out.returncode != 0, out.stdout[:500]
    assert fragment in out.stderr, out.stderr
    assert fragment in _refused_by_featx("-f", f)


@pytest.mark.parametrize("arg,fragment", [("concurrency=0", "concurrency"), ("modality=audio", "modality"),
                                          ("gpuClasses[0].enabled=true", "gpuClasses")])
def test_bad_set_values_are_refused_by_helm_and_featx_render(helm, arg, fragment):
    out = template(helm, "--set", arg, check=False)
    assert out.returncode != 0 and fragment in out.stderr
    assert fragment in _refused_by_featx("--set", arg)


def test_schema_key_pattern_is_featx_key_rule():
    """The chart refuses exactly what featx refuses: the same pattern, and it agrees with the
    rule's own checks on a table of values."""
    import json
    import re

    from featx.errors import UsageError
    from featx.keyparts import KEY_PATTERN, PREFIX_PATTERN, check_key_part, check_prefix

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    pattern = schema["definitions"]["keyPath"]["pattern"]
    assert pattern == KEY_PATTERN
    assert schema["properties"]["s3"]["properties"]["prefix"]["pattern"] == PREFIX_PATTERN
    for value, trimmed in (("", ""), ("/", ""), ("/a/b/", "a/b"), ("features", "features")):
        assert re.fullmatch(PREFIX_PATTERN, value) and check_prefix(value, "v") == trimmed
    for value in ("a//b", "/a/../b", "a\\b"):
        assert not re.fullmatch(PREFIX_PATTERN, value)
        with pytest.raises(UsageError):
            check_prefix(value, "v")
    for value in ("minhuh/prh", "wit_1024", ".hidden", "..x", "a/...", "featx-sample", "org/model.v2"):
        assert re.fullmatch(pattern, value) and check_key_part(value, "v") == value
    for value in ("", "/abs", "a//b", "a/", "..", "a/../b", ".", "a\\b", "a\tb", "a\x7fb"):
        assert not re.fullmatch(pattern, value)
        with pytest.raises(UsageError):
            check_key_part(value, "v")


def test_render_without_helm_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("FEATX_HELM", "")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))  # no helm beside the interpreter either
    r = run_cli("render", "--modelset", "smoke")
    assert r.code == 2 and "helm not found" in r.err and "make install" in r.err and r.err.count("\n") == 1

