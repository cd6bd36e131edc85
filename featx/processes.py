"""Whether a process still runs: a killed writer's temporaries and a local cluster's components are
judged by it."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while ``pid`` runs on this host; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False
