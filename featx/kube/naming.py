"""Kubernetes names and label values for featx's objects: deterministic, valid, unique.

A Job name is ``{release}-{model slug}-{hash}-a{attempt}``: DNS-1123 (lower-case alphanumerics and
``-``), at most 63 characters (the Job controller copies it into a label), the same for the same
release + artifact + attempt on every reconciler (so two racing reconcilers collide on the name
and the API server refuses the second create with 409). The hash covers the release and the
artifact stem (data set, subset, model, pool, caption index), so two ids that slug alike, or one
model under two pools, never share a name.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 63
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
HASH_LEN = 8
MAX_RELEASE_PART = 20


def short_hash(*parts: str, n: int = HASH_LEN) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def slug(text: str, limit: int) -> str:
    """Lower-case DNS-1123 fragment of ``text``: runs of other characters become one ``-``."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-")


def job_prefix(release: str, stem: str, model_id: str) -> str:
    """Everything of a Job name but the attempt suffix (``-a{n}``, up to 4 characters)."""
    rel = slug(release, MAX_RELEASE_PART) or "featx"
    digest = short_hash(release, stem)
    room = MAX_NAME - len(rel) - len(digest) - 2 - len("-a99")
    model = slug(model_id, 10**6)
    if len(model) > room and "/" in model_id:  # keep the model's own name rather than its org
        model = slug(model_id.rsplit("/", 1)[-1], 10**6)
    model = model[:room].rstrip("-")
    return "-".join(p for p in (rel, model or "m", digest) if p)


def job_name(release: str, stem: str, model_id: str, attempt: int) -> str:
    if not 1 <= attempt <= 99:
        raise ValueError(f"attempt {attempt}: must be 1..99")
    return f"{job_prefix(release, stem, model_id)}-a{attempt}"


def label_value(text: str) -> str:
    """A valid label value for ``text``: other characters become ``_``; longer than 63 characters
    keeps the head and appends a hash of the whole, so distinct long values stay distinct."""
    s = re.sub(r"[^A-Za-z0-9_.-]", "_", str(text))
    s = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", s)
    if len(s) > MAX_NAME:
        head = re.sub(r"[^A-Za-z0-9]+$", "", s[: MAX_NAME - HASH_LEN - 1])
        s = f"{head}-{short_hash(str(text))}"
    return s
