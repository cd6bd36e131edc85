"""Everything `make local-kind` applies (k8s/ and the chart with k8s/local-values.yaml) is accepted
by a real API server (server-side dry-run, Pod Security "restricted" enforced by the namespace),
and the pieces agree with each other: Service, Secret, bucket Job, chart values, script, image.

kind cannot start here (no Docker engine); the control plane of localcluster/ stands in for it.
The tests without the ``k8s`` mark need no cluster.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.cluster.fixtures import k8s_cluster  # noqa: F401 - pytest fixture
from tests.helpers import REPO

K8S = REPO / "k8s"
SCRIPT = REPO / "scripts" / "local-kind.sh"
KIND_CONFIG, VALUES, SECRET = K8S / "kind-config.yaml", K8S / "local-values.yaml", K8S / "seaweedfs-secret.yaml"
NOT_OBJECTS = {KIND_CONFIG.name, VALUES.name}  # kind's config and Helm values: never `kubectl apply`d
PLACEHOLDERS = ("@FEATX_S3_ACCESS_KEY@", "@FEATX_S3_SECRET_KEY@")
NAMESPACE = "featx"
IMAGE_UID = 10001


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name not in NOT_OBJECTS)


def objects() -> list[dict[str, Any]]:
    return [d for p in manifest_files() for d in docs(p)]


def find(kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} under k8s/"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        spec = o.get("spec") or {}
        if o["kind"] == "Pod":
            yield o["metadata"]["name"], spec
        elif "template" in spec and "spec" in spec["template"]:
            yield f"{o['kind']}/{o['metadata']['name']}", spec["template"]["spec"]


def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def filled_secret() -> str:
    """k8s/seaweedfs-secret.yaml as scripts/local-kind.sh applies it: placeholders replaced."""
    text = SECRET.read_text()
    for p in PLACEHOLDERS:
        text = text.replace(p, secrets.token_hex(12))
    return text


# -- no cluster needed ------------------------------------------------------------------------


def test_k8s_holds_only_objects_plus_kind_config_and_values():
    for path in manifest_files():
        for d in docs(path):
            assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), f"{path.name}: not an object"
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == NAMESPACE, f"{path.name}: {d['kind']} outside {NAMESPACE}"
    kind_cfg = docs(KIND_CONFIG)[0]
    assert kind_cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4" and kind_cfg["kind"] == "Cluster"
    assert "apiVersion" not in values()


def test_script_applies_every_manifest_and_names_agree():
    script = SCRIPT.read_text()
    deploy = (REPO / "scripts" / "local-deploy.sh").read_text()
    assert "scripts/local-deploy.sh" in script
    assert "k8s/kind-config.yaml" in script
    for path in [VALUES, *manifest_files()]:
        assert f"k8s/{path.name}" in deploy, f"scripts/local-deploy.sh never uses k8s/{path.name}"
    cluster = re.search(r'CLUSTER="\$\{KIND_CLUSTER:-([a-z0-9-]+)\}"', script)
    assert cluster and cluster[1] == docs(KIND_CONFIG)[0]["name"]
    image = re.search(r"^IMAGE=(\S+)", script, re.M)
    v = values()
    assert image and image[1] == f"{v['image']['repository']}:{v['image']['tag']}" == "featx-cpu:dev"
    assert "scripts/build-images.sh" in script and "kind load docker-image" in script
    assert v["image"]["pullPolicy"] == "Never"
    assert re.search(rf"^NS={NAMESPACE}$", deploy, re.M)
    store = re.search(r"^STORE=(\S+)$", deploy, re.M)
    assert store and store[1] == f"s3://{v['s3']['bucket']}/{v['s3']['prefix']}"
    assert re.search(rf"^MODELSET={v['modelset']}$", deploy, re.M) and re.search(rf"^DATASET={v['dataset']}$", deploy, re.M)
    for p in PLACEHOLDERS:
        assert p in deploy, f"the script must fill {p}"


def test_store_wiring_agrees():
    v = values()
    svc = find("Service", "seaweedfs")
    port = next(p for p in svc["spec"]["ports"] if p["name"] == "s3")
    endpoint = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port['port']}"
    assert v["s3"]["endpoint"] == endpoint
    dep = find("Deployment", "seaweedfs")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert f"-s3.port={port['port']}" in args and any(a.startswith("-s3.config=/etc/seaweedfs/") for a in args)

    secret = find("Secret", v["s3"]["credentialsSecret"]["name"])
    data = secret["stringData"]
    cred = v["s3"]["credentialsSecret"]
    assert data[cred["accessKeyIdKey"]] == PLACEHOLDERS[0] and data[cred["secretAccessKeyKey"]] == PLACEHOLDERS[1]
    identity = json.loads(data["s3.json"])["identities"][0]
    assert identity["credentials"] == [{"accessKey": PLACEHOLDERS[0], "secretKey": PLACEHOLDERS[1]}]
    config_volume = next(vol for vol in dep["spec"]["template"]["spec"]["volumes"] if "secret" in vol)
    assert config_volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["key"] for i in config_volume["secret"]["items"]} == {"s3.json"}

    job = find("Job", "featx-bucket")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BUCKET"]["value"] == v["s3"]["bucket"] and env["AWS_ENDPOINT_URL"]["value"] == endpoint
    for var, key in (("AWS_ACCESS_KEY_ID", "accessKeyIdKey"), ("AWS_SECRET_ACCESS_KEY", "secretAccessKeyKey")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": cred[key]}


def test_pods_are_pinned_and_locked_down():
    for where, spec in pod_specs(objects()):
        assert spec.get("automountServiceAccountToken") is False, f"{where}: no API token needed"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 1000 and psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec["containers"]:
            image = c["image"]
            assert re.search(r":[A-Za-z0-9][\w.-]*$", image) and not image.endswith(":latest"), f"{where}: pin {image}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
            assert c["resources"]["limits"]["memory"], f"{where}: set a memory limit"
            if image.startswith("featx-cpu:"):
                assert psc["runAsUser"] == IMAGE_UID and c["imagePullPolicy"] == "Never"
    assert find("Deployment", "seaweedfs")["spec"]["template"]["spec"]["containers"][0]["image"] == "chrislusf/seaweedfs:4.48"


def _bucket_job_script() -> str:
    container = find("Job", "featx-bucket")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    return container["args"][0]


@pytest.mark.s3
def test_bucket_job_script_against_a_real_s3_server(seaweedfs, tmp_path: Path):
    """The bucket Job's Python, run here against SeaweedFS: creates, then finds, then refuses bad keys."""
    script = tmp_path / "bucket.py"
    script.write_text(_bucket_job_script())
    bucket = f"featx-kind-{secrets.token_hex(4)}"

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, **seaweedfs.env(), "BUCKET": bucket, **env}
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=full, timeout=120)

    first, second = run(), run()
    assert first.returncode == 0 and f"bucket {bucket} created" in first.stdout, first.stderr
    assert second.returncode == 0 and f"bucket {bucket} exists" in second.stdout, second.stderr
    bad = run(AWS_SECRET_ACCESS_KEY="wrong-" + secrets.token_hex(8))
    assert bad.returncode != 0 and "refused the keys of Secret featx-s3" in bad.stderr, bad.stderr


# -- scripts/local-kind.sh with stand-ins for docker, kind, kubectl and helm -------------------

STUB = r"""#!/usr/bin/env bash
# Stand-in for {tool}: records the call, answers the few queries scripts/local-kind.sh makes.
printf '%s\n' "{tool} $*" >> "$STUB_DIR/calls.log"
args=" $* "
if [[ "{tool}" == kubectl && $args == *" apply "* && $args == *" -f - "* ]]; then
    cat > "$(mktemp "$STUB_DIR/stdin.XXXXXX")"
fi
case "{tool}:$args" in
    "kind: get clusters ") exit 0 ;;
    "helm: status "*) exit 1 ;;
    "kubectl:"*" get secret "*) exit 1 ;;
    "kubectl:"*" get job "*) printf '%s ' "$STUB_JOB_STATE" ;;
    "kubectl:"*" exec "*" status "*) printf 'featx-smoke/gpt2  done\n%s\n' "$STUB_STATUS" ;;
    "kubectl:"*" logs job/featx-bucket "*) echo "bucket featx-features created at http://seaweedfs..." ;;
esac
exit 0
"""


def run_script(tmp_path: Path, job_state: str = "Complete",
               status: str = "done=18  failed=0  missing=0  corrupt=0  running=0  pending=0",
               ) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("docker", "kind", "kubectl", "helm"):
        (stubs / tool).write_text(STUB.replace("{tool}", tool))
        (stubs / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path),
           "STUB_JOB_STATE": job_state, "STUB_STATUS": status, "FEATX_POLL_S": "0", "FEATX_WAIT_S": "3"}
    env.pop("KIND_NODE_IMAGE", None)
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    calls = (tmp_path / "calls.log").read_text().splitlines() if (tmp_path / "calls.log").exists() else []
    stdins = [f.read_text() for f in sorted(tmp_path.glob("stdin.*"), key=lambda f: f.stat().st_mtime_ns)]
    return p, calls, stdins


def index_of(calls: list[str], *parts: str) -> int:
    for i, call in enumerate(calls):
        if all(part in call for part in parts):
            return i
    raise AssertionError(f"no call with {parts} in:\n" + "\n".join(calls))


def test_local_kind_script_makes_the_cluster_then_runs_the_shared_deploy_steps(tmp_path: Path):
    """Only the kind-specific steps are checked here, with stand-ins (no registry: kind cannot
    start); scripts/local-deploy.sh itself runs for real in tests/e2e on a real node."""
    p, calls, stdins = run_script(tmp_path)
    assert p.returncode == 0, p.stderr
    order = [
        index_of(calls, "kind create cluster", "--name featx", "--config k8s/kind-config.yaml"),
        index_of(calls, "docker build -f docker/Dockerfile -t featx-cpu:dev", "--label featx.io/inputs="),
        index_of(calls, "kind load docker-image featx-cpu:dev --name featx"),
        index_of(calls, "kubectl --context kind-featx apply -f k8s/namespace.yaml"),
        index_of(calls, "helm upgrade --install featx ./helm/featx", "-f k8s/local-values.yaml", "--kube-context kind-featx"),
        index_of(calls, "kubectl --context kind-featx -n featx exec deployment/featx -- featx status"),
    ]
    assert order == sorted(order), "\n".join(calls)
    assert all("--context kind-featx" in c for c in calls if c.startswith("kubectl "))
    (secret_text,) = stdins
    assert "@FEATX_" not in secret_text
    assert "done=18" in p.stdout and "make local-kind-down" in p.stdout


def test_deploy_script_fails_when_the_run_does_not_finish(tmp_path: Path):
    p, calls, _ = run_script(tmp_path, status="done=17  failed=0  missing=0  corrupt=0  running=1  pending=0")
    assert p.returncode == 1 and "not finished after" in p.stderr, p.stderr


def test_deploy_script_fails_when_a_model_failed(tmp_path: Path):
    p, calls, _ = run_script(tmp_path, status="done=17  failed=1  missing=0  corrupt=0  running=0  pending=0")
    assert p.returncode == 1 and "not every model is done" in p.stderr, p.stderr


def test_local_kind_script_stops_when_the_bucket_job_fails(tmp_path: Path):
    p, calls, _ = run_script(tmp_path, job_state="Failed")
    assert p.returncode != 0 and "the bucket Job failed" in p.stderr, p.stderr
    assert not any(c.startswith("helm upgrade") for c in calls)


def test_local_kind_down_deletes_only_an_existing_cluster(tmp_path: Path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "kind").write_text(STUB.replace("{tool}", "kind"))
    (stubs / "kind").chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_DIR": str(tmp_path)}
    p = subprocess.run(["bash", str(REPO / "scripts" / "local-kind-down.sh")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 0 and "nothing to delete" in p.stderr
    assert (tmp_path / "calls.log").read_text().splitlines() == ["kind get clusters"]


# -- the real API server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def featx_namespace(k8s_cluster) -> Iterator[Any]:  # noqa: F811 - the fixture imported above
    """k8s/namespace.yaml applied for real (namespaced objects need it, even for a dry-run)."""
    existed = k8s_cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0
    applied = k8s_cluster.kubectl("apply", "-f", str(K8S / "namespace.yaml"), check=False)
    assert applied.returncode == 0, applied.stderr
    try:
        yield k8s_cluster
    finally:
        if not existed:
            k8s_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def dry_run(cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.kubectl_binary), "--kubeconfig", str(cluster.kubeconfig), "apply",
                           "--dry-run=server", *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.k8s
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_accepted_by_the_api_server(featx_namespace, path: Path):
    p = dry_run(featx_namespace, "-f", str(path))
    assert p.returncode == 0, f"{path.name}:\n{p.stderr}"
    # Pod Security "restricted" (namespace label "warn") would print a Warning for a pod template
    # that it is going to refuse.
    assert "Warning" not in p.stderr, f"{path.name}:\n{p.stderr}"
    created = {ln.split()[0] for ln in p.stdout.splitlines() if ln.strip()}
    assert len(created) == len(docs(path)), p.stdout


@pytest.mark.k8s
def test_secret_as_the_script_fills_it_is_accepted(featx_namespace):
    p = dry_run(featx_namespace, "-f", "-", stdin=filled_secret())
    assert p.returncode == 0 and "secret/featx-s3" in p.stdout, p.stderr


def _helm(cluster) -> Path:
    helm = Path(cluster.bin_dir) / "helm"
    if not helm.exists():
        pytest.skip(f"no helm in {cluster.bin_dir} (scripts/build-control-plane.sh builds it)")
    return helm


@pytest.mark.k8s
def test_chart_with_local_values_accepted_and_commands_parse(featx_namespace):
    """What `helm install featx ./helm/featx -n featx -f k8s/local-values.yaml` creates passes the API
    server and the namespace's Pod Security, and every featx container command parses."""
    from featx.cli.main import build_parser

    chart = REPO / "helm" / "featx"
    rendered = subprocess.run([str(_helm(featx_namespace)), "template", "featx", str(chart), "-n", NAMESPACE,
                               "-f", str(VALUES)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    p = dry_run(featx_namespace, "-f", "-", stdin=rendered.stdout)
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr, p.stderr

    chart_objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    commands = []
    for where, spec in pod_specs(chart_objects):
        for c in spec["containers"]:
            assert c["image"] == "featx-cpu:dev", f"{where}: {c['image']}"
            commands.append((where, c.get("command") or [], c.get("args") or []))
    for cm in (o for o in chart_objects if o["kind"] == "ConfigMap"):  # the Job template of the run
        for text in cm.get("data", {}).values():
            run = yaml.safe_load(text)
            if isinstance(run, dict) and "jobTemplate" in run:
                for c in run["jobTemplate"]["podSpec"]["containers"]:
                    commands.append(("jobTemplate", c["command"], ["--models", "featx-smoke/gpt2"]))
    assert commands
    for where, command, args in commands:
        assert command[:1] == ["featx"], f"{where}: {command}"
        try:
            build_parser().parse_args(command[1:] + args)
        except SystemExit as e:
            pytest.fail(f"{where}: featx rejects `{shlex.join(command + args)}` (exit {e.code})")


@pytest.mark.k8s
def test_jobs_the_controller_creates_pass_the_namespace_pod_security(featx_namespace, monkeypatch):
    """The extraction Jobs of k8s/local-values.yaml (as `featx render` and the controller make
    them) are accepted in the restricted namespace."""
    from tests.helpers import run_cli

    monkeypatch.chdir(REPO)
    r = run_cli("render", "-f", str(VALUES), "--release", "featx", "--namespace", NAMESPACE)
    assert r.code == 0, r.err
    p = dry_run(featx_namespace, "-f", "-", stdin=r.out)
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr, p.stderr
    assert p.stdout.count("job.batch/") == len([d for d in yaml.safe_load_all(r.out) if d]), p.stdout
