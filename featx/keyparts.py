"""The one rule for values that become parts of a store key (data set, subset, model, pool,
prefix): relative, '/'-separated, no empty, ``.`` or ``..`` part, no backslash or control
character. A value that breaks it could write outside the output directory or collide with
another key, so it is refused before any work. The Helm chart's ``values.schema.json`` carries
``KEY_PATTERN`` and ``PREFIX_PATTERN`` verbatim (RE2 has no look-ahead, hence the spelled-out part
rule); a test keeps them equal.
"""

from __future__ import annotations

import re

from featx.errors import UsageError, clip

_CHAR = r"[^/\\\x00-\x1f\x7f]"  # any character but '/', '\' and control characters
_NOT_DOT = r"[^/\\\x00-\x1f\x7f.]"
PART_PATTERN = rf"(?:{_NOT_DOT}{_CHAR}*|\.{_NOT_DOT}{_CHAR}*|\.\.{_CHAR}+)"  # not empty, '.' or '..'
_PARTS = rf"{PART_PATTERN}(?:/{PART_PATTERN})*"
KEY_PATTERN = rf"^{_PARTS}$"
PREFIX_PATTERN = rf"^/*(?:{_PARTS})?/*$"  # a store prefix: surrounding '/' are trimmed (chart: trimAll)
_KEY = re.compile(KEY_PATTERN)


def _why(value: str) -> str:
    """Which part of the rule ``value`` breaks, in words."""
    if not value:
        return "it is empty"
    if value.startswith("/"):
        return "it is an absolute path"
    if "\\" in value:
        return "it contains a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "it contains a control character"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "it has an empty, '.' or '..' part"
    return "it is not a relative key"


def check_key_part(value: str, what: str) -> str:
    """``value`` unchanged if it may name part of a store key; else a UsageError naming ``what``
    (e.g. ``--subset``) and the rule it breaks."""
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise UsageError(f"{what} {clip(value)} cannot name a store key: {_why(str(value))}; use a relative "
                         "name of '/'-separated parts without '..', '\\' or control characters")
    return value


def check_prefix(value: str, what: str) -> str:
    """A store prefix without its surrounding '/' (empty: the bucket's or directory's root); the
    rest must pass ``check_key_part``."""
    prefix = value.strip("/")
    return check_key_part(prefix, what) if prefix else prefix
