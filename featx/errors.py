"""Error types that carry the failure policy (permanent vs transient) and the fix for the user.

Exit codes are a contract with the Kubernetes Job's ``podFailurePolicy``: a permanent failure
exits with ``EXIT_PERMANENT`` and the Job fails at once; ``EXIT_OOM`` asks for a larger GPU class.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # at least one model failed transiently; retrying may help
EXIT_USAGE = 2  # bad flags or input; nothing was started
EXIT_PERMANENT = 3  # a model cannot succeed on retry (not found, gated, unsupported)
EXIT_OOM = 4  # out of memory even after splitting batches; retry on a larger GPU


class FeatxError(Exception):
    """An error whose message is a complete one-line explanation with the next step."""

    exit_code = EXIT_FAILED


class UsageError(FeatxError):
    """Bad input from the user: flags, names, paths. Nothing has been written."""

    exit_code = EXIT_USAGE


class PermanentError(FeatxError):
    """A model that cannot succeed on retry (missing, gated without token, unsupported)."""

    exit_code = EXIT_PERMANENT


class TransientError(FeatxError):
    """A failure that may succeed on retry (network, storage, preemption)."""

    exit_code = EXIT_FAILED


class OutOfMemoryError(FeatxError):
    """Out of accelerator memory even at batch size 1; a larger GPU class may succeed."""

    exit_code = EXIT_OOM


class StoreError(UsageError):
    """Store settings that no retry can fix: a malformed URL, wrong or read-only credentials, a
    missing or invalid bucket; the message says which. An unreachable endpoint, a timeout, a 5xx
    or throttling is a ``TransientError`` instead (exit 1: the Job retries)."""
