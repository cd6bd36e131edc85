"""Host <-> accelerator copies that never make the accelerator wait for the host.

Inputs are built in pinned host memory and copied without blocking; results are copied back into
pinned buffers without blocking, and the host reads them once, after ``finish``. In between, the
Python loop only queues work, so the next batch's kernels are queued while a copy runs. On CPU
every function is a plain copy.
"""

from __future__ import annotations

import torch


def to_device(host: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    if device.type == "cuda":
        host = tuple(t.pin_memory() for t in host)
    return tuple(t.to(device, non_blocking=True) for t in host)


def to_host(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype`` in host memory; from CUDA still in flight until ``finish``."""
    t = t.to(dtype)
    if t.device.type != "cuda":
        return t
    out = torch.empty(t.shape, dtype=dtype, pin_memory=True)
    return out.copy_(t, non_blocking=True)


def finish(device: torch.device) -> None:
    """Wait for every queued copy to the host; results of ``to_host`` are readable after this."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
