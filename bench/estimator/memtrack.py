"""Peak of live tensor bytes, counted at the dispatcher: the CPU proxy for CUDA's
``torch.cuda.max_memory_allocated`` (which counts the caching allocator's live blocks, without
its reserved-but-free slack or the CUDA context).

``LiveBytes`` sees every aten op's outputs; composite ops (``CompositeImplicitAutograd``, which
the Python key sees whole under ``inference_mode``) are decomposed first, so that their
temporaries are seen as the allocator would see them. An output whose storage is new (neither tracked yet
nor one of the op's inputs' storages, which covers views, in-place and ``out=`` ops and
``_unsafe_view``) adds its storage's ``nbytes``; a ``weakref.finalize`` on the storage object
subtracts it when the last tensor or view on it dies (torch keeps one Python object per storage
alive as long as the storage is, so the finalizer fires exactly on free). Storages are keyed by
``_cdata`` (the address of the C++ ``StorageImpl``), which views share and which, unlike
``data_ptr()``, is distinct for empty and for fake/meta storages. Storages that existed before
entry (the weights) are never counted.

What it cannot see: buffers a kernel allocates and frees inside one op (workspaces); on GPU
those are cuBLAS/attention workspaces of a few MiB, cached after the first batch.

Because the count depends only on shapes, dtypes and the op sequence, it is the same for a real
run and for one under ``FakeTensorMode`` (no data, no compute), which is how
``bench.estimator.check`` measures 7B-wide bf16 layers on a CPU without bf16 matmuls.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storages(tree: Any) -> Iterator[torch.UntypedStorage]:
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            yield leaf.untyped_storage()


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as m: ...`` then ``m.peak``: the most bytes of tensor storages
    allocated inside the block alive at once; ``m.peak_op`` names the op that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.peak_op = ""
        self._tracked: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.namespace == "aten":  # a composite's temporaries (cross_entropy's log_softmax) count
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        inputs = {s._cdata for s in _storages((args, kwargs))}
        for storage in _storages(out):
            key = storage._cdata
            if key in self._tracked or key in inputs:
                continue
            nbytes = storage.nbytes()
            self._tracked.add(key)
            self.live += nbytes
            weakref.finalize(storage, self._free, key, nbytes)
            if self.live > self.peak:
                self.peak, self.peak_op = self.live, str(func)
        return out
