"""Peak-memory estimate of one extraction step, from catalog facts alone (no model loaded).

peak = weights + tokens_per_batch x bytes_per_token + loss_chunk + runtime overhead

- weights: parameters x bytes per parameter (bf16 2, fp32 4, 4-bit NF4 ~0.5 plus the unquantised
  embeddings and head in bf16);
- bytes_per_token: the live activations of one layer at a time (residual stream, attention
  projections, the MLP's widened hidden ~4x, norm outputs: ~16 x hidden values) in the compute
  dtype, plus fp32 pooling temporaries. Hidden states are pooled as each layer produces them, so
  nothing grows with the number of layers;
- loss_chunk: full-vocabulary logits exist only for ``LOSS_CHUNK_TOKENS`` tokens at a time (fp32,
  with the cross-entropy's own copy);
- overhead: CUDA context, kernels' workspaces and allocator slack.
The same numbers choose the token budget of a batch plan and the GPU class of a Kubernetes Job.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1024**3
LOSS_CHUNK_TOKENS = 4096
RUNTIME_OVERHEAD = int(1.25 * GiB)
ACTIVATION_VALUES_PER_HIDDEN = 16
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "nf4": 0.5}
MIN_TOKEN_BUDGET = 512
MAX_TOKEN_BUDGET = 131072


@dataclass(frozen=True)
class ModelShape:
    """The few numbers the estimate needs; from a catalog entry or a loaded config."""

    params: int
    hidden: int
    layers: int
    vocab: int = 0


def weight_bytes(shape: ModelShape, dtype: str) -> int:
    if dtype == "nf4":
        embed = 2 * shape.vocab * shape.hidden  # input embeddings and head stay in bf16
        return int(max(shape.params - embed, 0) * 0.5 * 1.06 + embed * 2)
    return int(shape.params * DTYPE_BYTES[dtype])


def bytes_per_token(shape: ModelShape, dtype: str) -> int:
    compute = 2 if dtype == "nf4" else DTYPE_BYTES[dtype]
    return int(shape.hidden * (ACTIVATION_VALUES_PER_HIDDEN * compute + 2 * 4))


def loss_chunk_bytes(shape: ModelShape) -> int:
    return LOSS_CHUNK_TOKENS * shape.vocab * 4 * 2


def peak_bytes(shape: ModelShape, dtype: str, tokens_per_batch: int) -> int:
    """Predicted peak accelerator memory for batches of ``tokens_per_batch`` padded tokens."""
    return (weight_bytes(shape, dtype) + tokens_per_batch * bytes_per_token(shape, dtype)
            + loss_chunk_bytes(shape) + RUNTIME_OVERHEAD)


def token_budget(shape: ModelShape, dtype: str, free_bytes: int, margin: float = 0.9) -> int:
    """Largest padded-token count per batch whose predicted peak fits ``margin`` x free memory;
    0 when even the weights do not fit."""
    room = int(free_bytes * margin) - peak_bytes(shape, dtype, 0)
    if room <= 0:
        return 0
    return max(MIN_TOKEN_BUDGET, min(MAX_TOKEN_BUDGET, room // bytes_per_token(shape, dtype)))
