"""The one line Kubernetes shows for a failed container.

A container's termination message is read from ``terminationMessagePath`` (``/dev/termination-log``,
a file the kubelet mounts). featx writes its one-line error there, so ``kubectl describe``, the Job's
pod status and the controller's give-up reason say *why* (model missing, bad input) instead of
"exit code 3". Outside a pod the file does not exist and nothing is written.
"""

from __future__ import annotations

from featx import settings

MAX_BYTES = 4096  # the kubelet keeps at most 4 KiB of a termination message


def report_termination(text: str) -> None:
    """Write ``text`` as the container's termination message, if this runs in a pod."""
    path = settings.termination_log()
    if not path.is_file():
        return
    try:
        path.write_bytes(text.encode()[:MAX_BYTES])
    except OSError:
        pass  # a read-only or missing mount must never turn a failure into a crash
