"""All environment settings in one place: featx's own (one ``FEATX_`` prefix, documented
defaults) and the Hugging Face ones featx acts on. Values a process may change while running
(tests, a pod's mounts) are functions, read when asked; the rest are read once at import."""

from __future__ import annotations

import os
from pathlib import Path


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false")


#: Root of featx's own cache (generated sample data, trained tiny tokenizers).
FEATX_HOME = Path(os.environ.get("FEATX_HOME", Path.home() / ".cache" / "featx"))
#: Default output directory of ``featx extract`` (the reference's ``./results/features``).
DEFAULT_OUTPUT_DIR = os.environ.get("FEATX_OUTPUT_DIR", "./results/features")
#: Default data set and subset (revision) of the Platonic Representation Hypothesis study.
DEFAULT_DATASET = os.environ.get("FEATX_DATASET", "minhuh/prh")
DEFAULT_SUBSET = os.environ.get("FEATX_SUBSET", "wit_1024")
#: Show tracebacks for errors (otherwise one line with the fix).
DEBUG = _flag("FEATX_DEBUG")
#: Data-loader worker processes for image decoding and transforms (0 = in the main process).
NUM_WORKERS = int(os.environ.get("FEATX_NUM_WORKERS", str(min(8, os.cpu_count() or 1))))
#: Seconds between ``progress`` log events of a model's extraction (0: after every batch).
PROGRESS_INTERVAL_S = float(os.environ.get("FEATX_PROGRESS_S", "10"))
#: Hub token for gated models; the usual huggingface_hub variable.
HF_TOKEN_ENV = "HF_TOKEN"
#: Where a container's one-line failure goes (the kubelet's terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"


def auto_shard_bytes() -> int:
    """``$FEATX_SHARD_BYTES``: about how many feature bytes one row shard holds when
    ``--shard_rows``/``--num_shards`` are not given (default 1 GiB); a model with less is one file."""
    return int(os.environ.get("FEATX_SHARD_BYTES", str(1 << 30)))


def helm_override() -> str:
    """``$FEATX_HELM``: the helm binary to run instead of the one found beside featx or on PATH."""
    return os.environ.get("FEATX_HELM", "")


def termination_log() -> Path:
    """``$FEATX_TERMINATION_LOG`` (tests), else the kubelet's ``/dev/termination-log``."""
    return Path(os.environ.get("FEATX_TERMINATION_LOG", TERMINATION_LOG))


def hf_token() -> str | None:
    """``$HF_TOKEN``: the hub token for gated models (None when unset or empty)."""
    return os.environ.get(HF_TOKEN_ENV) or None


def hf_offline() -> bool:
    """``$HF_HUB_OFFLINE``: huggingface_hub uses only its local cache."""
    return _flag("HF_HUB_OFFLINE")


def hf_endpoint() -> str | None:
    """``$HF_ENDPOINT``: a hub mirror instead of huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or None
#: Seconds after which a model's temporary files and unfinished S3 uploads count as a killed
#: writer's leftovers that its next commit removes (local ones of a dead process on this host go at
#: once); a live writer keeps writing to its own, so keep this above one upload's duration.
ORPHAN_GRACE_S = float(os.environ.get("FEATX_ORPHAN_GRACE_S", "3600"))
#: Tests only: a FIFO that a commit reads to its end after publishing the data object and before
#: writing the manifest (inside the signal-deferred section), so that a test can signal the process
#: at exactly that point without timing (tests/test_signals.py). Unset: no effect.
TEST_COMMIT_BARRIER = os.environ.get("FEATX_TEST_COMMIT_BARRIER", "")
