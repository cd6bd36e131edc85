"""Error types and the failure policy they carry: one table says, for each kind of failure, its
exit code, whether a retry can help and how the cluster treats it.

The exit codes are a contract with the Kubernetes Job's ``podFailurePolicy`` (``featx.kube.jobs``
reads ``FAIL_JOB_EXIT_CODES``) and the reconciler's classification (``policy_for_exit``): a
permanent failure fails the Job at once; ``oom`` asks for a larger GPU class.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

FailureKind = Literal["permanent", "transient", "oom"]


@dataclass(frozen=True)
class Policy:
    """How one kind of failure is treated: by the runner (exit code), in a model's failure record
    (``kind``), in logs (``retry``) and by the cluster (``fails_job``: the Job's podFailurePolicy
    fails it at once, no retry)."""

    name: str
    kind: FailureKind
    exit_code: int
    retry: str
    fails_job: bool


EXIT_OK = 0
TRANSIENT = Policy("transient", "transient", 1, "yes", fails_job=False)  # network, storage, preemption
USAGE = Policy("usage", "permanent", 2, "no (fix the input)", fails_job=True)  # bad flags or input
PERMANENT = Policy("permanent", "permanent", 3, "no (permanent)", fails_job=True)  # not found, gated, unsupported
OOM = Policy("oom", "oom", 4, "on a larger GPU", fails_job=False)  # out of memory even at batch size 1
POLICIES = (TRANSIENT, USAGE, PERMANENT, OOM)

EXIT_FAILED, EXIT_USAGE, EXIT_PERMANENT, EXIT_OOM = (p.exit_code for p in POLICIES)
#: Exit codes with which a Job fails at once (its podFailurePolicy's FailJob rule).
FAIL_JOB_EXIT_CODES = tuple(p.exit_code for p in POLICIES if p.fails_job)
#: Exit codes with which an Indexed Job's index fails at once (FailIndex), not retried in place: those
#: above, and out of memory (the same pod would fail again; the controller's next Job is a class larger).
FAIL_INDEX_EXIT_CODES = tuple(p.exit_code for p in POLICIES if p.fails_job or p.kind == "oom")


def clip(value: object, limit: int = 80, quote: bool = True) -> str:
    """``value`` (its repr, or the text itself with ``quote=False``) cut to ``limit`` characters,
    for error messages that name what a user's file holds: one line, whatever the input."""
    text = repr(value) if quote else " ".join(str(value).split())
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


class FeatxError(Exception):
    """An error whose message is a complete one-line explanation with the next step."""

    policy = TRANSIENT

    @property
    def exit_code(self) -> int:
        return self.policy.exit_code


class UsageError(FeatxError):
    """Bad input from the user: flags, names, paths. Nothing has been written."""

    policy = USAGE


class PermanentError(FeatxError):
    """A model that cannot succeed on retry (missing, gated without token, unsupported)."""

    policy = PERMANENT


class TransientError(FeatxError):
    """A failure that may succeed on retry (network, storage, preemption)."""

    policy = TRANSIENT


class DiskFullError(TransientError):
    """No space (ENOSPC) or quota (EDQUOT) left where featx writes: the model fails, what its
    commit staged is removed, the run goes on with the next model; free space and run again."""


def disk_full(exc: BaseException, where: object) -> DiskFullError | None:
    """``exc`` as a ``DiskFullError`` naming ``where`` when it is one, else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        code = errno.errorcode[exc.errno]
        return DiskFullError(f"no space left on device ({code}) writing {where}: free space there (or choose "
                             "another --output_dir / TMPDIR) and run again")
    return None


class OutOfMemoryError(FeatxError):
    """Out of accelerator memory even at batch size 1; a larger GPU class may succeed."""

    policy = OOM


class StoreError(UsageError):
    """Store settings that no retry can fix: a malformed URL, wrong or read-only credentials, a
    missing or invalid bucket; the message says which. An unreachable endpoint, a timeout, a 5xx
    or throttling is a ``TransientError`` instead (exit 1: the Job retries)."""


def policy_of(exc: BaseException) -> Policy:
    """The policy of any exception: featx's own say it; anything else may pass on a retry."""
    return exc.policy if isinstance(exc, FeatxError) else TRANSIENT


def policy_for_exit(code: int | None) -> Policy | None:
    """The policy an exit code of ``featx extract`` stands for (None: not one of featx's)."""
    return next((p for p in POLICIES if p.exit_code == code), None)
