"""Wall-clock time as featx records it (UTC, ISO 8601, seconds): in manifests, failure records
and log lines alike."""

from __future__ import annotations

import time


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
