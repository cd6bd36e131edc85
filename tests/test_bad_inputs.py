"""The bad-input matrix: every way a user's input can be wrong, one table row each, run through
the real CLI (in-process) against real smoke models, a real local directory and a real SeaweedFS.

Each row asserts
- the exit status (README, "Exit status": 0 ok, 1 retry, 2 bad input, 3 permanent, 4 OOM);
- the error line: a run-level error is exactly one stderr line starting ``featx: error:`` that
  holds ``error`` (nothing started: no ``start`` event); a model-level failure is one ``failed``
  event per failing model that holds ``error``, and no ``featx: error:`` line. Other stderr lines
  are featx's own log events or notes; never a traceback;
- nothing written outside the output location: the test's whole tree (data set, working
  directory, output directory inside it) is snapshotted before and after; a refused run
  (exit 2) changes nothing at all, not even an empty output directory (or S3 prefix);
- nothing partial or stale counted as done: ``featx status`` shows exactly ``committed`` done.

Cases run in-process (``run_cli``); ``subprocess=True`` runs ``featx`` as its own process (signals,
a Job's exit code). Add a case by adding a row to ``CASES`` (a ``setup`` builds its files, a
``store_setup`` writes into the store the case runs against, local or S3; ``{out}``, ``{data}``,
``{cwd}``, ``{s3}``, ``{closed}`` (a port nobody listens on), ``{silent}`` (a server that accepts
connections and never answers) in ``args`` are filled in); nothing else changes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from featx.catalog import get_spec
from featx.data.datasets import local_name
from featx.errors import EXIT_FAILED, EXIT_OK, EXIT_PERMANENT, EXIT_USAGE
from featx.pipeline.keys import artifact_key
from featx.store import Store
from tests.helpers import CliResult, run_cli, run_featx

GPT2, VIT = "featx-smoke/gpt2", "featx-smoke/vit"
SAMPLE = ("--dataset", "featx-sample", "--num_samples", "2")
IDENTITY_FLAGS = ("--dataset", "--subset", "--num_samples", "--caption_idx", "--pool", "--init", "--seed", "--format")
TEXTS = ["a red circle on a café table", "a blue square next to a river", "a green stripe in a quiet library"]


# -- files a case needs (under the test's root; the working directory is root/cwd) ----------------
def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)
    return path.read_bytes()


def image_folder(root: Path, files: list[str] | None = None, captions: bytes | None = None) -> Path:
    """root/data: three PNGs and a captions.jsonl naming ``files`` (default: the three PNGs)."""
    data = root / "data"
    for i in range(3):
        _png(data / f"{i}.png", (60 * i, 30, 200 - 60 * i))
    names = files or [f"{i}.png" for i in range(3)]
    if captions is None:
        captions = "".join(json.dumps({"file": f, "text": [TEXTS[i % 3], "page", "section"]}) + "\n"
                           for i, f in enumerate(names)).encode()
    (data / "captions.jsonl").write_bytes(captions)
    return data


def metadata_folder(name: str, content: bytes) -> Callable[[Path], None]:
    """root/data: three PNGs and a Hugging Face imagefolder ``name`` (metadata.jsonl/.csv) of ``content``."""
    def setup(root: Path) -> None:
        data = image_folder(root)
        (data / "captions.jsonl").unlink()
        (data / name).write_bytes(content)
    return setup


def saved_dataset(texts: list) -> Callable[[Path], None]:
    """root/data: a ``save_to_disk`` data set of one PNG per row and ``texts`` as its text column."""
    def setup(root: Path) -> None:
        from datasets import Dataset, Image

        images = [{"bytes": _png(root / "0.png"), "path": None}] * len(texts)
        Dataset.from_dict({"image": images, "text": texts}).cast_column("image", Image()).save_to_disk(str(root / "data"))
    return setup


def truncated_image(root: Path) -> None:
    data = image_folder(root)
    png = (data / "1.png").read_bytes()
    (data / "1.png").write_bytes(png[: len(png) // 2])


def not_an_image(root: Path) -> None:
    image_folder(root)
    (root / "data" / "1.png").write_text("this is text, not a picture\n")


def stale_file_and_truncated_image(root: Path) -> None:
    """A data file left by an interrupted run (no manifest), then a run whose image is bad."""
    truncated_image(root)
    stale = root / "cwd" / "out" / local_name(root / "data") / "default" / "featx-smoke_vit_pool-cls.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")


def eight_rows_committed(root: Path) -> None:
    """A committed file of the first 8 rows: a run over all rows must not count it as done."""
    r = run_cli("extract", "--models", GPT2, "--dataset", "featx-sample", "--num_samples", "8",
                "--output_dir", str(root / "cwd" / "out"))
    assert r.code == 0, r.err


def crafted_pickle(root: Path) -> None:
    """A `.npy` under --out whose unpickling would create ``root/pwned``."""
    class Payload:
        def __reduce__(self):
            return (Path.touch, (root / "pwned",))

    folder = root / "cwd" / "out" / "alignment" / "featx-sample" / "default" / "a_b"
    folder.mkdir(parents=True)
    np.save(folder / "mutual_knn_k10.npy", np.array([Payload()], dtype=object), allow_pickle=True)


def modelset(text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "cwd" / "set.yaml").write_text(text)
    return setup


def values_file(text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "cwd" / "values.yaml").write_text(text)
    return setup


def a_file(root: Path) -> None:
    (root / "cwd" / "file").write_text("in the way\n")


def run_yaml_file(text: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "cwd" / "run.yaml").write_text(text)
    return setup


def alias_bomb(levels: int, top: str = "models") -> str:
    """"Billion laughs": 9 ** ``levels`` strings from a few hundred bytes of YAML aliases."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines + [f"{top}: *a{levels}"]) + "\n"


# -- what a store may hold (written into the case's store, local or S3) -----------------------------
def sample_key(model: str):
    return artifact_key(get_spec(model), "featx-sample", None)


def gpt2_committed(store: Store, where: str) -> None:
    r = run_cli("extract", "--models", GPT2, *SAMPLE, "--store", where)
    assert r.code == 0, r.err


def _wrong_types(store: Store) -> bytes:
    raw = json.loads(store.get_bytes(sample_key(GPT2).manifest))
    return json.dumps({**raw, "size": "big", "shape": "NxLxD"}).encode()


UNREADABLE: dict[str, Callable[[Store], bytes]] = {  # bytes under a record's name that are no record
    "not JSON": lambda store: b"{this is not JSON",
    "{}": lambda store: b"{}",
    "[]": lambda store: b"[]",
    "empty": lambda store: b"",
    "wrong types": _wrong_types,
    "a 5000-digit number": lambda store: b'{"size": ' + b"9" * 5000 + b"}",
    "a foreign object": lambda store: json.dumps({"apiVersion": "v1", "kind": "ConfigMap"}).encode(),
}


def unreadable(what: str, record: str = "manifest") -> Callable[[Store, str], None]:
    """gpt2 committed; vit's manifest (or failure record) is ``UNREADABLE[what]``."""
    def setup(store: Store, where: str) -> None:
        gpt2_committed(store, where)
        key = sample_key(VIT)
        store.put_bytes(key.manifest if record == "manifest" else key.failure, UNREADABLE[what](store))
    return setup


def stray_manifest(store: Store, where: str) -> None:
    gpt2_committed(store, where)
    store.put_bytes("featx-sample/default/notes.manifest.json", b"[1, 2, 3]")


def gpt2_rotten(store: Store, where: str) -> None:
    """gpt2 committed, then one bit of its file flipped with size and mtime kept: bit rot."""
    gpt2_committed(store, where)
    path = Path(where) / sample_key(GPT2).data
    st, data = path.stat(), bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def silent_server() -> int:
    """A port on 127.0.0.1 that accepts connections and never answers (a hung S3 endpoint)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit: int
    error: str = ""  # in the error line (run level) or in each failing model's `failed` event
    command: str = "extract"
    setup: Callable[[Path], None] | None = None
    committed: tuple[str, ...] = ()  # models `featx status` must show done afterwards
    failed: tuple[str, ...] = ()  # models that fail (model level) with `error`
    s3: str = ""  # identity for a SeaweedFS case: "featx", "read-only" or "wrong"
    stderr: str = ""  # a note that must appear on stderr (exit 0 cases)
    stdout: tuple[str, ...] = ()  # lines that must appear in stdout (``featx status``'s table)
    store_setup: Callable[[Store, str], None] | None = None  # (the store, its --store/--output_dir value)
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False  # run `featx` as its own process (as a Job does), not in-process
    marks: tuple = field(default=())


def usage(*args: str, error: str, command: str = "extract", setup: Callable[[Path], None] | None = None,
          s3: str = "", store_setup: Callable[[Store, str], None] | None = None, env: dict[str, str] | None = None) -> Case:
    return Case(tuple(args), EXIT_USAGE, error, command, setup, s3=s3, store_setup=store_setup, env=env or {},
                marks=(pytest.mark.s3,) if s3 else ())


CASES: dict[str, Case] = {
    # -- flags ------------------------------------------------------------------------------------
    "unknown flag": usage("--models", GPT2, "--no_such_flag", error="unrecognized arguments"),
    "pool not a pool": usage("--models", GPT2, "--pool", "mean", error="invalid choice"),
    "unknown modality": usage("--models", GPT2, "--modality", "audio", error="invalid choice"),
    "pool the modality lacks": usage("--models", VIT, "--pool", "last", *SAMPLE, error="--pool last is not defined for vision"),
    "device not a device": usage("--models", GPT2, *SAMPLE, "--device", "gpu", error="use cpu, cuda or cuda:N"),
    "device cuda without a GPU": Case(("--models", GPT2, *SAMPLE, "--device", "cuda"), EXIT_USAGE,
                                      "sees no GPU", marks=(pytest.mark.skipif(
                                          torch.cuda.is_available(), reason="this machine has a GPU"),)),
    "num_samples 0": usage("--models", GPT2, "--dataset", "featx-sample", "--num_samples", "0", error="positive"),
    "num_samples negative": usage("--models", GPT2, "--dataset", "featx-sample", "--num_samples", "-3", error="positive"),
    "num_samples too large": usage("--models", GPT2, "--dataset", "featx-sample", "--num_samples", "65",
                                   error="--num_samples 65 exceeds the 64 rows"),
    "batch_size negative": usage("--models", GPT2, *SAMPLE, "--batch_size", "-1", error="positive"),
    "token_budget 0": usage("--models", GPT2, *SAMPLE, "--token_budget", "0", error="positive"),
    "caption_idx too large": usage("--models", GPT2, *SAMPLE, "--caption_idx", "7", error="out of range"),
    "caption_idx negative": usage("--models", GPT2, *SAMPLE, "--caption_idx", "-1", error="--caption_idx -1: give 0 or a positive text index"),
    # -- models and modelsets -----------------------------------------------------------------------
    "unknown modelset": usage("--modelset", "nope", *SAMPLE, error="unknown modelset 'nope'"),
    "modelset file missing": usage("--modelset", "missing.yaml", *SAMPLE, error="missing.yaml does not exist"),
    "modelset not YAML": usage("--modelset", "set.yaml", *SAMPLE, setup=modelset("models: [gpt2\n"), error="not valid YAML"),
    "modelset without a models list": usage("--modelset", "set.yaml", *SAMPLE, setup=modelset("name: x\n"),
                                            error="needs a top-level 'models:' list"),
    "modelset entry with an unknown field": usage(
        "--modelset", "set.yaml", *SAMPLE, error="set.yaml: unknown field(s) ['colour'] in model entry 'my/llm'",
        setup=modelset("models:\n  - {id: my/llm, modality: language, family: llama, colour: red}\n")),
    "modelset entry without modality": usage("--modelset", "set.yaml", *SAMPLE, error="set.yaml: model entry 'my/llm' lacks field(s) ['modality']",
                                             setup=modelset("models:\n  - {id: my/llm, family: llama}\n")),
    "modelset entry neither id nor mapping": usage("--modelset", "set.yaml", *SAMPLE, error="neither an id nor a mapping",
                                                   setup=modelset("models:\n  - [gpt2]\n")),
    "modelset entry with a bad modality": usage("--modelset", "set.yaml", *SAMPLE, error="modality 'audio'",
                                                setup=modelset("models:\n  - {id: my/llm, modality: audio, family: x}\n")),
    "trust_remote_code without the flag": usage(
        "--modelset", "set.yaml", *SAMPLE, error="featx-smoke/gpt2 sets trust_remote_code",
        setup=modelset("models:\n  - {id: featx-smoke/gpt2, trust_remote_code: true}\n")),
    "model id not an id": usage("--models", "Bad Name!", *SAMPLE, error="neither an HF repo id"),
    "model id with ..": usage("--models", "org/../x", *SAMPLE, error="model id 'org/../x'"),
    "model id with an empty part": usage("--models", "org//x", *SAMPLE, error="empty, '.' or '..' part"),
    "model id with a backslash": usage("--models", "org\\x", *SAMPLE, error="backslash"),
    "model directory missing": usage("--models", "./no-such-model", *SAMPLE, error="no such local model directory"),
    "two ids, one file name": usage("--models", "org/a_b", "org_a/b", *SAMPLE, error="would write the same file"),
    "no models selected": usage("--models", GPT2, "--modality", "vision", *SAMPLE, error="no models selected"),
    # -- data sets ----------------------------------------------------------------------------------
    "dataset path missing": usage("--models", GPT2, "--dataset", "/no/such/dir", error="does not exist"),
    "dataset is a file": usage("--models", GPT2, "--dataset", "./file", setup=a_file, error="is a file"),
    "local folder named like a hub id": usage("--models", GPT2, "--dataset", "file", setup=a_file,
                                              error="write it as a path: --dataset ./file"),
    "dataset empty string": usage("--models", GPT2, "--dataset", "", error="--dataset is empty"),
    "dataset id with ..": usage("--models", GPT2, "--dataset", "org/..", error="--dataset name 'org/..'"),
    "subset escapes the output directory": usage("--models", GPT2, *SAMPLE, "--subset", "../../x", error="--subset '../../x'"),
    "subset absolute": usage("--models", GPT2, *SAMPLE, "--subset", "/tmp/x", error="absolute path"),
    "subset with a control character": usage("--models", GPT2, *SAMPLE, "--subset", "a\tb", error="control character"),
    "subset with an empty part": usage("--models", GPT2, *SAMPLE, "--subset", "a//b", error="empty, '.' or '..' part"),
    "folder without a captions file": usage("--models", GPT2, "--dataset", "{cwd}", error="neither a save_to_disk data set"),
    "captions not UTF-8": usage("--models", GPT2, "--dataset", "{data}", error="captions.jsonl:2: not UTF-8",
                                setup=lambda root: image_folder(root, captions=b'{"file": "0.png", "text": "ok"}\n'
                                                                b'{"file": "1.png", "text": "caf\xe9"}\n')),
    "captions line not JSON": usage("--models", GPT2, "--dataset", "{data}", error="captions.jsonl:1: each line must be JSON",
                                    setup=lambda root: image_folder(root, captions=b"0.png a caption\n")),
    "metadata.jsonl line not JSON": usage("--models", GPT2, "--dataset", "{data}", error="metadata.jsonl:2: each line must be a JSON object",
                                          setup=metadata_folder("metadata.jsonl", b'{"file_name": "0.png", "text": "a"}\n0.png b\n')),
    "metadata.jsonl without file_name": usage("--models", GPT2, "--dataset", "{data}", error="metadata.jsonl:1: needs a 'file_name' column",
                                              setup=metadata_folder("metadata.jsonl", b'{"file": "0.png", "text": "a"}\n')),
    "metadata.jsonl line not an object": usage("--models", GPT2, "--dataset", "{data}", error="metadata.jsonl:1: needs a 'file_name' column",
                                               setup=metadata_folder("metadata.jsonl", b'["0.png", "a"]\n')),
    "metadata.jsonl text not a string": usage("--models", GPT2, "--dataset", "{data}", error="metadata.jsonl:1: needs a 'file_name' and a text column",
                                              setup=metadata_folder("metadata.jsonl", b'{"file_name": "0.png", "text": 7}\n')),
    "metadata.csv without a text column": usage("--models", GPT2, "--dataset", "{data}", error="metadata.csv:2: needs a 'file_name' and a text column",
                                                setup=metadata_folder("metadata.csv", b"file_name,label\n0.png,cat\n")),
    "metadata.csv not UTF-8": usage("--models", GPT2, "--dataset", "{data}", error="metadata.csv:2: not UTF-8",
                                    setup=metadata_folder("metadata.csv", b"file_name,text\n0.png,caf\xe9\n")),
    "metadata.csv image outside": usage("--models", GPT2, "--dataset", "{data}", error="is not a relative path inside",
                                        setup=metadata_folder("metadata.csv", b"file_name,text\n../0.png,a\n")),
    "metadata.jsonl image missing": usage("--models", GPT2, "--dataset", "{data}", error="do not exist",
                                          setup=metadata_folder("metadata.jsonl", b'{"file_name": "nope.png", "text": "a"}\n')),
    "image outside the data set": usage("--models", GPT2, "--dataset", "{data}", error="'../secret.png' is not a relative path inside",
                                        setup=lambda root: (image_folder(root, ["0.png", "../secret.png"]),
                                                            _png(root / "secret.png"))),
    "image by absolute path": usage("--models", GPT2, "--dataset", "{data}", error="is not a relative path inside",
                                    setup=lambda root: image_folder(root, ["0.png", "/etc/hostname"])),
    "image missing": usage("--models", GPT2, "--dataset", "{data}", error="do not exist",
                           setup=lambda root: image_folder(root, ["0.png", "nope.png"])),
    "save_to_disk row without text": usage("--models", GPT2, "--dataset", "{data}", error="1 row(s) have no text",
                                           setup=saved_dataset(["a cat", None, "a dog"])),
    "save_to_disk text not strings": usage("--models", GPT2, "--dataset", "{data}",
                                           error="column 'text' is int64; it must hold a string or a list of strings",
                                           setup=saved_dataset([1, 2, 3])),
    "empty data set": usage("--models", GPT2, "--dataset", "{data}", error="is empty: it has no rows",
                            setup=lambda root: image_folder(root, captions=b"")),
    "hub unreachable (offline)": Case(("--models", GPT2, "--dataset", "prh"), EXIT_FAILED, "cannot reach the Hugging Face hub"),
    # -- where features go --------------------------------------------------------------------------
    "store and output_dir both": usage("--models", GPT2, *SAMPLE, "--store", "x", "--output_dir", "{out}",
                                       error="either --store or --output_dir"),
    "store s3 with one slash": usage("--models", GPT2, *SAMPLE, "--store", "s3:/bucket/x", error="'s3:/bucket/x' is not an S3 URL"),
    "store s3 without a bucket": usage("--models", GPT2, *SAMPLE, "--store", "s3://", error="is not an S3 URL"),
    "store upper-case scheme": usage("--models", GPT2, *SAMPLE, "--store", "S3://bucket", error="lower-case s3"),
    "store invalid bucket name": usage("--models", GPT2, *SAMPLE, "--store", "s3://Bad_Bucket/x", error="not a valid S3 bucket name"),
    "store prefix with ..": usage("--models", GPT2, *SAMPLE, "--store", "s3://bucket/a/../b", error="--store prefix 'a/../b'"),
    "store gs scheme": usage("--models", GPT2, *SAMPLE, "--store", "gs://bucket/x", error="storage.googleapis.com"),
    "output_dir that looks like a URL": usage("--models", GPT2, *SAMPLE, "--output_dir", "s3:out", error="is not an S3 URL"),
    "output_dir is a file": usage("--models", GPT2, *SAMPLE, "--output_dir", "file", setup=a_file,
                                  error="exists and is not a directory"),
    "output_dir under a file": usage("--models", GPT2, *SAMPLE, "--output_dir", "file/out", setup=a_file,
                                     error="cannot write to output directory"),
    "output_dir under /proc": usage("--models", GPT2, *SAMPLE, "--output_dir", "/proc/featx-out", error="cannot write to output directory"),
    "S3 endpoint unreachable (a Job's process)": Case(
        ("--models", GPT2, *SAMPLE, "--store", "s3://featx-test/x", "--s3-endpoint", "http://127.0.0.1:{closed}"),
        EXIT_FAILED, "cannot reach S3 endpoint", subprocess=True),
    "S3 wrong credentials": usage("--models", GPT2, *SAMPLE, "--store", "{s3}", s3="wrong", error="access denied"),
    "S3 missing bucket": usage("--models", GPT2, *SAMPLE, "--store", "s3://no-such-bucket-featx/x", s3="featx",
                               error="bucket no-such-bucket-featx does not exist"),
    "S3 read-only credentials": usage("--models", GPT2, *SAMPLE, "--store", "{s3}", s3="read-only",
                                      error="may read but not write"),
    "S3 read-only credentials may run status": Case(("--models", GPT2, *SAMPLE, "--store", "{s3}"), EXIT_OK,
                                                    command="status", s3="read-only", marks=(pytest.mark.s3,)),
    # -- other commands -------------------------------------------------------------------------------
    "status: subset escapes": usage("--models", GPT2, *SAMPLE, "--subset", "../x", "--output_dir", "{out}", command="status",
                                    error="--subset '../x'"),
    "status: output_dir is a file": usage("--models", GPT2, *SAMPLE, "--output_dir", "file", setup=a_file, command="status",
                                          error="exists and is not a directory"),
    "status: store s3 with one slash": usage("--models", GPT2, *SAMPLE, "--store", "s3:/b", command="status",
                                             error="is not an S3 URL"),
    "align: subset escapes": usage("--dataset", "featx-sample", "--subset", "../x", "--output_dir", "{out}",
                                   "--out", "{out}/alignment", command="align", error="--subset '../x'"),
    "align: store gs scheme": usage("--dataset", "featx-sample", "--store", "gs://b/x", "--out", "{out}/alignment",
                                    command="align", error="storage.googleapis.com"),
    "models: modelset entry with an unknown field": usage(
        "--modelset", "set.yaml", command="models", error="set.yaml: unknown field(s) ['colour']",
        setup=modelset("models:\n  - {id: my/llm, modality: language, family: llama, colour: red}\n")),
    "modelset lists one model twice": usage(
        "--modelset", "set.yaml", *SAMPLE, error="set.yaml: lists featx-smoke/gpt2 more than once",
        setup=modelset("models:\n  - featx-smoke/gpt2\n  - featx-smoke/vit\n  - {id: featx-smoke/gpt2}\n")),
    "report: a crafted pickle under --out is never loaded": usage(
        "--out", "{out}/alignment", command="report", error="no `featx align` results", setup=crafted_pickle),
    # -- chart values (featx render runs the real `helm template`) ------------------------------------
    "render: plain HF_TOKEN in job.env": usage(
        "-f", "values.yaml", command="render", error="job.env[0] HF_TOKEN has a plain value",
        setup=values_file("job:\n  env:\n    - {name: HF_TOKEN, value: hf_abc}\n")),
    "render: plain S3 secret key in job.env": usage(
        "-f", "values.yaml", command="render", error="AWS_SECRET_ACCESS_KEY has a plain value",
        setup=values_file("job:\n  env:\n    - {name: AWS_SECRET_ACCESS_KEY, value: x}\n")),
    "render: credentials in the S3 endpoint": usage("--set", "s3.endpoint=http://ak:sk@minio:9000", command="render",
                                                   error="endpoint"),
    "render: subset escapes": usage("--set", "subset=../../x", command="render", error="subset"),
    "render: seed in extraArgs is not a number": usage(
        "-f", "values.yaml", command="render", error="job.extraArgs ['--seed', 'x']: argument --seed: invalid int value",
        setup=values_file("job:\n  extraArgs: ['--seed', 'x']\n")),
    # -- runs that go ahead: a bad model or a bad image fails alone, the others commit -----------------
    "truncated image: vision fails, language commits": Case(
        ("--models", GPT2, VIT, "--dataset", "{data}", "--num_workers", "1"), EXIT_PERMANENT,
        "row 1 (", setup=truncated_image, committed=(GPT2,), failed=(VIT,)),
    "not an image: vision fails, language commits": Case(
        ("--models", VIT, GPT2, "--dataset", "{data}", "--num_workers", "0"), EXIT_PERMANENT,
        "1.png): unreadable image", setup=not_an_image, committed=(GPT2,), failed=(VIT,)),
    "model missing from the offline cache among good ones": Case(
        ("--models", "someone/missing-model", GPT2, *SAMPLE), EXIT_PERMANENT, "HF_HUB_OFFLINE=1",
        committed=(GPT2,), failed=("someone/missing-model",)),
    "stale data file stays not done after a failing image": Case(
        ("--models", VIT, GPT2, "--dataset", "{data}", "--num_workers", "0"), EXIT_PERMANENT, "unreadable image",
        setup=stale_file_and_truncated_image, committed=(GPT2,), failed=(VIT,)),
    "trust_remote_code with the flag": Case(
        ("--modelset", "set.yaml", *SAMPLE, "--trust-remote-code"), EXIT_OK, committed=(GPT2,),
        setup=modelset("models:\n  - {id: featx-smoke/gpt2, trust_remote_code: true}\n")),
    "8 rows committed, then all rows: stale, redone": Case(
        ("--models", GPT2, "--dataset", "featx-sample"), EXIT_OK, committed=(GPT2,),
        setup=eight_rows_committed, stderr="num_samples: 8 -> none"),
    "--models repeated: extracted once": Case(("--models", GPT2, VIT, GPT2, *SAMPLE), EXIT_OK,
                                              committed=(GPT2, VIT), stderr="names featx-smoke/gpt2 more than once"),
    # -- what the store holds: unreadable records are `corrupt`, the rest goes on ---------------------
    **{f"status: unreadable manifest ({what})": Case(
        ("--models", GPT2, VIT, *SAMPLE), EXIT_OK, command="status", store_setup=unreadable(what),
        stdout=(f"{GPT2} done", f"{VIT} corrupt unreadable manifest")) for what in UNREADABLE},
    **{f"extract: unreadable manifest ({what}) is redone": Case(
        ("--models", GPT2, VIT, *SAMPLE), EXIT_OK, committed=(GPT2, VIT), store_setup=unreadable(what),
        stderr="unreadable manifest") for what in ("not JSON", "[]", "wrong types", "a 5000-digit number")},
    "status: unreadable failure record": Case(
        ("--models", GPT2, VIT, *SAMPLE), EXIT_OK, command="status", store_setup=unreadable("{}", "failure"),
        stdout=(f"{GPT2} done", f"{VIT} corrupt unreadable failure record")),
    "extract: unreadable failure record is redone": Case(
        ("--models", GPT2, VIT, *SAMPLE), EXIT_OK, committed=(GPT2, VIT), store_setup=unreadable("not JSON", "failure")),
    "status of what the store holds: a stray manifest": Case(
        SAMPLE, EXIT_OK, command="status", store_setup=stray_manifest, stdout=(f"{GPT2} done",)),
    "align: unreadable manifest": usage("--models", GPT2, VIT, "--dataset", "featx-sample", "--output_dir", "{out}",
                                        "--out", "{out}/alignment", command="align", error="corrupt: unreadable manifest",
                                        store_setup=unreadable("a 5000-digit number")),
    "S3 status: unreadable manifest": Case(
        ("--models", GPT2, VIT, *SAMPLE, "--store", "{s3}"), EXIT_OK, command="status", s3="featx",
        store_setup=unreadable("not JSON"), stdout=(f"{GPT2} done", f"{VIT} corrupt unreadable manifest"),
        marks=(pytest.mark.s3,)),
    "S3 extract: unreadable manifest is redone": Case(
        ("--models", GPT2, VIT, *SAMPLE, "--store", "{s3}"), EXIT_OK, s3="featx", committed=(GPT2, VIT),
        store_setup=unreadable("[]"), marks=(pytest.mark.s3,)),
    # -- bit rot: a flipped bit, size and mtime kept -----------------------------------------------------
    "status: bit rot is done to a listing": Case(("--models", GPT2, *SAMPLE), EXIT_OK, command="status",
                                                 store_setup=gpt2_rotten, stdout=(f"{GPT2} done",)),
    "status --verify: bit rot is corrupt": Case(("--models", GPT2, *SAMPLE, "--verify"), EXIT_OK, command="status",
                                                store_setup=gpt2_rotten, stdout=(f"{GPT2} corrupt data object's sha256",)),
    "extract --verify: bit rot is redone": Case(("--models", GPT2, *SAMPLE, "--verify"), EXIT_OK, committed=(GPT2,),
                                                store_setup=gpt2_rotten, stderr="is not the manifest's"),
    # -- inputs that would exhaust time or memory ------------------------------------------------------
    "modelset alias bomb": usage("--modelset", "set.yaml", *SAMPLE, setup=modelset(alias_bomb(9)), error="an alias bomb?"),
    "modelset alias bomb, 10 levels": usage("--modelset", "set.yaml", *SAMPLE, setup=modelset(alias_bomb(10)),
                                            error="an alias bomb?"),
    "modelset with more aliases than allowed": usage(
        "--modelset", "set.yaml", *SAMPLE, error="YAML aliases (more than 1,000)",
        setup=modelset("x: &x featx-smoke/gpt2\nmodels: [" + ", ".join(["*x"] * 1001) + "]\n")),
    "models: modelset alias bomb": usage("--modelset", "set.yaml", command="models", setup=modelset(alias_bomb(9)),
                                         error="an alias bomb?"),
    "render --config: alias bomb in run.yaml": usage("--config", "run.yaml", command="render",
                                                     setup=run_yaml_file(alias_bomb(9, "modelset")), error="an alias bomb?"),
    "render: alias bomb in values (helm refuses it)": usage("-f", "values.yaml", command="render",
                                                            setup=values_file(alias_bomb(9, "extra")),
                                                            error="excessive aliasing"),
    "modelset with 100,000 entries, one twice": usage(
        "--modelset", "set.yaml", *SAMPLE, error="lists org/m-7 more than once",
        setup=modelset("models:\n" + "".join(f"  - org/m-{i}\n" for i in range(100_000)) + "  - org/m-7\n")),
    "modelset entry with a 100,000-character id": usage(
        "--modelset", "set.yaml", *SAMPLE, error="characters) is neither an HF repo id",
        setup=modelset("models:\n  - '" + "a" * 100_000 + " b'\n")),
    "captions line nested 100,000 deep": usage("--models", GPT2, "--dataset", "{data}",
                                               error="captions.jsonl:1: each line must be JSON",
                                               setup=lambda root: image_folder(root, captions=b"[" * 100_000 + b"\n")),
    # -- S3 endpoints that hang or are misnamed ------------------------------------------------------
    "S3 endpoint that never answers: extract": Case(
        ("--models", GPT2, *SAMPLE, "--store", "s3://featx-test/x", "--s3-endpoint", "http://127.0.0.1:{silent}"),
        EXIT_FAILED, "did not answer", subprocess=True),
    "S3 endpoint that never answers: status": Case(
        ("--models", GPT2, *SAMPLE, "--store", "s3://featx-test/x", "--s3-endpoint", "http://127.0.0.1:{silent}"),
        EXIT_FAILED, "did not answer", command="status", subprocess=True),
    "S3 region malformed": usage("--models", GPT2, *SAMPLE, "--store", "s3://featx-test/x", "--s3-endpoint",
                                 "http://127.0.0.1:{closed}", error="AWS region 'bad region!' is not a valid region name",
                                 env={"AWS_REGION": "bad region!"}),
}


def _tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): (p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*") if not p.is_symlink()}


def _fill(args: tuple[str, ...], values: dict[str, str]) -> list[str]:
    return [a.format(**values) if "{" in a else a for a in args]


def _s3_objects(server, prefix: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _check_stderr(case: Case, r: CliResult) -> None:
    lines = r.err.splitlines()
    assert "Traceback" not in r.err, r.err
    errors = [line for line in lines if line.startswith("featx: error:")]
    failed = [line for line in lines if " featx failed " in line]
    if case.exit != EXIT_OK and not case.failed:  # a run-level error: one line, nothing started
        assert len(errors) == 1 and case.error in errors[0], r.err[-3000:]
        assert len(errors[0]) < 500, errors[0][:1000]
        assert not any(" featx start " in line for line in lines), r.err
    else:
        assert errors == [], r.err
        assert len(failed) == len(case.failed), r.err
        for model, line in zip(case.failed, failed):
            assert f"model={model} " in line and case.error in line, line
    if case.stderr:
        assert case.stderr in r.err, r.err
    rows = [" ".join(line.split()) for line in r.out.splitlines()]
    for want in case.stdout:
        assert any(row.startswith(want) for row in rows), r.out


@pytest.mark.parametrize("name", [pytest.param(n, marks=c.marks) for n, c in CASES.items()])
def test_bad_input(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    case = CASES[name]
    root, cwd = tmp_path, tmp_path / "cwd"
    cwd.mkdir()
    out = cwd / "out"
    values = {"out": str(out), "data": str(root / "data"), "cwd": str(cwd), "s3": "", "closed": "1", "silent": "1"}
    server, prefix = None, f"bad-inputs/{tmp_path.name}"
    if case.s3:
        server = request.getfixturevalue("seaweedfs")
        env = server.env(read_only=case.s3 == "read-only")
        if case.s3 == "wrong":
            env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        values["s3"] = server.url(prefix)
    if "{silent}" in " ".join(case.args):
        values["silent"] = str(silent_server())
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(k, "unused")
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if "{closed}" in " ".join(case.args):
        from bench.seaweedfs import free_ports

        values["closed"] = str(free_ports(1)[0])  # nothing listens there
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(k, "unused")
    if case.command == "render":
        request.getfixturevalue("helm")
    if case.setup:
        case.setup(root)
    if case.store_setup:
        from featx.store import open_store

        where = values["s3"] or str(out)
        case.store_setup(open_store(where, manifest_cache=False) if values["s3"] else open_store(where), where)
    monkeypatch.chdir(cwd)
    args = _fill(case.args, values)
    if case.command in ("extract", "status") and "--output_dir" not in args and "--store" not in args:
        args += ["--output_dir", str(out)]
    before = _tree(root)

    r = run_featx(case.command, *args) if case.subprocess else run_cli(case.command, *args)

    assert r.code == case.exit, r.err[-3000:]
    _check_stderr(case, r)
    after = _tree(root)
    if case.exit == EXIT_USAGE:  # refused before any work: nothing written anywhere
        assert after == before
        if server is not None:
            assert _s3_objects(server, prefix) == []
    new = sorted(set(after) - set(before))
    assert all(p == "cwd/out" or p.startswith("cwd/out/") for p in new), new
    if case.committed or case.failed:
        # status is asked about the run extract made: the same data set and identity options
        same_run = [a for flag in IDENTITY_FLAGS if flag in args for a in (flag, args[args.index(flag) + 1])]
        where = ["--store", values["s3"]] if values["s3"] else ["--output_dir", str(out)]
        status = run_cli("status", "--models", *case.committed, *case.failed, *same_run, *where, "--json", "--verify")
        states = {row["id"]: row["state"] for row in json.loads(status.out)}
        assert states == {**{m: "done" for m in case.committed}, **{m: "failed" for m in case.failed}}, states
    if (case.committed or case.failed) and server is None:
        # one manifest per committed model and nothing else (a setup's half file has none)
        manifests = sorted(p for p in after if p.startswith("cwd/out/") and p.endswith(".manifest.json"))
        assert len(manifests) == len(case.committed), manifests
        assert all(m.removesuffix(".manifest.json") + ".pt" in after for m in manifests), manifests


def test_the_matrix_is_wide():
    """The matrix covers at least 40 cases and every exit status a bad input can cause."""
    assert len(CASES) >= 40
    assert {c.exit for c in CASES.values()} >= {EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PERMANENT}


@pytest.mark.parametrize("value", ["../x", "/abs", "a//b", "a\\b"])
def test_library_entry_point_refuses_bad_key_parts(value: str, tmp_path: Path):
    """``featx.load`` applies the same rule as the CLI."""
    import featx
    from featx.errors import UsageError

    with pytest.raises(UsageError, match="cannot name a store key|no such local model directory"):
        featx.load(GPT2, str(tmp_path), dataset="featx-sample", subset=value)
    assert os.listdir(tmp_path) == []


def test_a_transient_exit_is_retried_and_a_usage_exit_is_not():
    """The Job's podFailurePolicy fails at once on exit 2/3; exit 1 (unreachable store, timeouts,
    5xx, throttling) falls to backoffLimit, so the pod is retried."""
    from featx.errors import FAIL_JOB_EXIT_CODES, OOM, TRANSIENT

    assert EXIT_FAILED not in FAIL_JOB_EXIT_CODES and OOM.exit_code not in FAIL_JOB_EXIT_CODES
    assert {EXIT_USAGE, EXIT_PERMANENT} <= set(FAIL_JOB_EXIT_CODES) and TRANSIENT.exit_code == EXIT_FAILED


@pytest.mark.parametrize("code, status, kind", [
    ("AccessDenied", 403, "StoreError"), ("InvalidAccessKeyId", 403, "StoreError"),
    ("SignatureDoesNotMatch", 403, "StoreError"), ("NoSuchBucket", 404, "StoreError"),
    ("InvalidBucketName", 400, "StoreError"), ("SlowDown", 503, "TransientError"),
    ("InternalError", 500, "TransientError"), ("ServiceUnavailable", 503, "TransientError"),
    ("Throttling", 400, "TransientError"),
])
def test_s3_errors_are_classified_by_cause(code: str, status: int, kind: str):
    """botocore's own ClientError, as its retries leave it, translated by the store's table."""
    import botocore.exceptions as bce

    from featx.store.s3 import S3Store

    store = S3Store.from_url("s3://bucket/p", endpoint_url="http://127.0.0.1:9", manifest_cache=False)
    exc = bce.ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                          "PutObject")
    out = store._translate(exc, "p/k")
    assert type(out).__name__ == kind and "\n" not in str(out)
    assert out.exit_code == (EXIT_USAGE if kind == "StoreError" else EXIT_FAILED)


@pytest.mark.s3
def test_write_probe_passes_and_leaves_nothing(seaweedfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With write access the probe passes and takes its object (or directories) away again."""
    from featx.store import open_store

    for k, v in seaweedfs.env().items():
        monkeypatch.setenv(k, v)
    open_store(seaweedfs.url("probe-run"), manifest_cache=False).check(write=True)
    assert _s3_objects(seaweedfs, "probe-run") == []
    open_store(output_dir=str(tmp_path / "a" / "b")).check(write=True)
    assert list(tmp_path.iterdir()) == []
