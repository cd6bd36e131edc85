"""Peak-memory estimate of one extraction step, from catalog facts alone (no model loaded).

peak = weights + tokens_per_batch x bytes_per_token + loss_chunk + runtime overhead

- weights: parameters x bytes per parameter (bf16 2, fp32 4, 4-bit NF4 ~0.5 plus the unquantised
  embeddings and head in bf16);
- bytes_per_token: the live activations of one layer at a time in the compute dtype: up to four
  tensors of the MLP's width (gate, up, their product, an activation's temporaries: GPT-2's
  ``gelu_new`` makes several) and four of the hidden width (residual stream, norm output,
  attention output and projections), plus fp32 pooling temporaries. Measured on CPU with a
  live-tensor tracker (``python -m bench.estimator``): Gemma's 8x-wide MLP peaks at 172.6 KB per
  token against this formula's 245.8 KB. Hidden states are pooled as each layer produces them, so
  nothing grows with the number of layers;
- loss_chunk: full-vocabulary logits exist only for ``loss_chunk_tokens(vocab)`` tokens at a time,
  a chunk sized so that its fp32 logits take ``LOSS_CHUNK_BYTES`` (256 tokens for Gemma's 256k
  vocabulary, 2048 for Llama's 32k); per logit the head's output, its fp32 copy, the
  log-softmax and a soft-capping temporary (``LOSS_BYTES_PER_LOGIT``);
- overhead: CUDA context, kernels' workspaces and allocator slack.
The same numbers choose the token budget of a batch plan and the GPU class of a Kubernetes Job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MiB = 1024**2
GiB = 1024**3
LOSS_CHUNK_BYTES = 256 * MiB
MIN_LOSS_CHUNK_TOKENS, MAX_LOSS_CHUNK_TOKENS = 256, 4096
LOSS_BYTES_PER_LOGIT = 12
RUNTIME_OVERHEAD = int(1.25 * GiB)
MLP_TENSORS, HIDDEN_TENSORS = 4, 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "nf4": 0.5}
MIN_TOKEN_BUDGET = 512
# Past ~16k tokens a batch's matmuls are large enough to keep an accelerator busy; more only
# costs memory (a 7B model at 16k tokens peaks near 1.4x its bf16 weights).
MAX_TOKEN_BUDGET = 16384


@dataclass(frozen=True)
class ModelShape:
    """The few numbers the estimate needs; from a catalog entry or a loaded config."""

    params: int
    hidden: int
    layers: int
    vocab: int = 0
    intermediate: int = 0  # the MLP's width; 0: 4 x hidden (GPT-2, BLOOM, OPT, ...)

    @property
    def mlp(self) -> int:
        return self.intermediate or 4 * self.hidden

    @classmethod
    def from_config(cls, config: Any, params: int = 0) -> "ModelShape":
        """From a transformers config (the MLP width under any of its families' names)."""
        widths = (getattr(config, k, None) for k in ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"))
        mlp = next((w for w in widths if isinstance(w, int) and w > 0), 0)
        return cls(params, config.hidden_size, config.num_hidden_layers, getattr(config, "vocab_size", 0) or 0, mlp)


def estimate_dtype(compute_dtype: str) -> str:
    """The estimator's dtype for a loaded model's compute dtype (4-bit models compute in bf16)."""
    return compute_dtype if compute_dtype in DTYPE_BYTES else "bfloat16"


def weight_bytes(shape: ModelShape, dtype: str) -> int:
    if dtype == "nf4":
        embed = 2 * shape.vocab * shape.hidden  # input embeddings and head stay in bf16
        return int(max(shape.params - embed, 0) * 0.5 * 1.06 + embed * 2)
    return int(shape.params * DTYPE_BYTES[dtype])


def bytes_per_token(shape: ModelShape, dtype: str) -> int:
    compute = 2 if dtype == "nf4" else DTYPE_BYTES[dtype]
    return int(compute * (MLP_TENSORS * shape.mlp + HIDDEN_TENSORS * shape.hidden) + 2 * 4 * shape.hidden)


def loss_chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of the loss: fp32 logits of ``LOSS_CHUNK_BYTES``, within [256, 4096]."""
    return max(MIN_LOSS_CHUNK_TOKENS, min(MAX_LOSS_CHUNK_TOKENS, LOSS_CHUNK_BYTES // max(4 * vocab, 1)))


def loss_chunk_bytes(shape: ModelShape, tokens_per_batch: int | None = None) -> int:
    """Memory of one loss chunk; a batch of fewer tokens than a chunk holds only its own logits."""
    tokens = loss_chunk_tokens(shape.vocab)
    if tokens_per_batch is not None:
        tokens = min(tokens, tokens_per_batch)
    return tokens * shape.vocab * LOSS_BYTES_PER_LOGIT


def peak_bytes(shape: ModelShape, dtype: str, tokens_per_batch: int) -> int:
    """Predicted peak accelerator memory for batches of ``tokens_per_batch`` padded tokens
    (``0``: what a batch adds to nothing, with a whole loss chunk, for sizing)."""
    return (weight_bytes(shape, dtype) + tokens_per_batch * bytes_per_token(shape, dtype)
            + loss_chunk_bytes(shape, tokens_per_batch or None) + RUNTIME_OVERHEAD)


def token_budget(shape: ModelShape, dtype: str, free_bytes: int, margin: float = 0.9) -> int:
    """Largest padded-token count per batch whose predicted peak fits ``margin`` x free memory;
    0 when even the weights do not fit."""
    room = int(free_bytes * margin) - peak_bytes(shape, dtype, 0)
    if room <= 0:
        return 0
    return max(MIN_TOKEN_BUDGET, min(MAX_TOKEN_BUDGET, room // bytes_per_token(shape, dtype)))
