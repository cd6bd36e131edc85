"""Language-model extraction: length-sorted, right-padded batches; every hidden state pooled as
the layer produces it; next-token loss computed in chunks from the final hidden state.

Right padding makes a text's features independent of its batch mates for every family (causal
attention never looks right; absolute, rotary and ALiBi positions all start at 0), which the
reference's left padding without ``position_ids`` breaks for GPT-2/GPT-Neo.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from featx.errors import OutOfMemoryError, PermanentError
from featx.extract.loading import Loaded
from featx.extract.pooling import pool_tokens
from featx.extract.result import Extraction
from featx.extract.transfer import finish, to_device, to_host
from featx.plan.batching import plan_batches
from featx.plan.memory import loss_chunk_tokens

LOG2E = math.log2(math.e)


@dataclass
class Tokenized:
    """Token ids per text, unpadded, and what the model reads of each text: ``read_bytes`` are
    the UTF-8 bytes the kept tokens cover (the whole text unless it was truncated), ``truncated``
    the rows longer than the model's positions."""

    ids: list[list[int]]
    read_bytes: list[int]
    truncated: int = 0


def tokenize(tokenizer: Any, texts: list[str], max_length: int | None) -> Tokenized:
    """Token ids with the tokenizer's own special tokens (as the reference), cut at ``max_length``."""
    enc = tokenizer(texts, add_special_tokens=True, truncation=max_length is not None,
                    max_length=max_length)["input_ids"]
    fallback = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids = [x if x else [fallback] for x in enc]
    read_bytes = [len(t.encode("utf-8")) for t in texts]
    truncated = 0
    for i, text in enumerate(texts):  # only rows that fill every position can have been cut
        if max_length is not None and len(ids[i]) >= max_length and len(tokenizer(
                text, add_special_tokens=True, truncation=True, max_length=max_length + 1)["input_ids"]) > max_length:
            truncated += 1
            read_bytes[i] = len(_read_text(tokenizer, text, ids[i], max_length).encode("utf-8"))
    return Tokenized(ids, read_bytes, truncated)


def _read_text(tokenizer: Any, text: str, ids: list[int], max_length: int) -> str:
    """The part of ``text`` a truncated row's tokens cover: up to the last kept token's end
    offset (fast tokenizers), else the kept tokens decoded."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_length,
                            return_offsets_mapping=True)["offset_mapping"]
        return text[:max(end for _, end in offsets)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def max_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _decoder_layers(base: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList | None:
    """The block list: the shallowest ModuleList with one entry per hidden layer."""
    found = [(name.count("."), m) for name, m in base.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers]
    return min(found, key=lambda x: x[0])[1] if found else None


class LayerTap:
    """Pools hidden states as the decoder produces them, so the L+1 states of a batch never
    exist at once. ``[0]`` is the first block's input, ``[i]`` block i-1's output and ``[L]`` the
    final (normed) state, as ``output_hidden_states`` numbers them. Where a model projects its
    final state to another width (OPT-350m: 1024 -> 512), ``[L]`` is the last block's output,
    so that every layer has the same width."""

    def __init__(self, model: Any, pool: str):
        self.model, self.pool = model, pool
        self.base = model.base_model
        self.layers = _decoder_layers(self.base, model.config.num_hidden_layers)
        self.pooled: list[torch.Tensor] = []
        self.lengths: torch.Tensor | None = None
        self.use_hooks = self.layers is not None
        self.projected_final = False

    def _pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pooled on the layer's own device, gathered on the input's (``device_map="auto"``
        spreads layers over several GPUs; a no-op on one device)."""
        return pool_tokens(hidden, self.lengths.to(hidden.device), self.pool).to(self.lengths.device)

    def _take(self, hidden: torch.Tensor) -> None:
        self.pooled.append(self._pool(hidden))

    @contextmanager
    def hooks(self) -> Iterator[None]:
        handles = []
        if self.use_hooks:
            def pre(_m, args, kwargs):
                self._take(args[0] if args else kwargs["hidden_states"])

            def post(_m, _args, output):
                self._take(output[0] if isinstance(output, (tuple, list)) else output)

            handles.append(self.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
            handles += [layer.register_forward_hook(post) for layer in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _final(self, final: torch.Tensor) -> None:
        """Replace the last block's raw output by the final normed state when widths agree."""
        if final.shape[-1] == self.pooled[0].shape[-1]:
            self.pooled[-1] = self._pool(final)
        else:
            self.projected_final = True

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, lengths: torch.Tensor,
                full_model: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled states [B, L+1, D] (float32) and the final hidden state [B, T, D] (or the
        logits, when ``full_model`` runs the whole causal LM)."""
        self.pooled, self.lengths = [], lengths
        module = self.model if full_model else self.base
        with self.hooks():
            out = module(input_ids=ids, attention_mask=attn, use_cache=False,
                         output_hidden_states=full_model or not self.use_hooks)
        if self.use_hooks:
            self._final(out.hidden_states[-1] if full_model else out[0])
        else:
            states = out.hidden_states
            if states[-1].shape[-1] != states[0].shape[-1]:
                raise PermanentError("the final hidden state has another width than the blocks and "
                                     "featx found no block list to hook; this architecture is unsupported")
            self.pooled = [self._pool(h) for h in states]
        return torch.stack(self.pooled, 1), (out.logits if full_model else out[0])


def _logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class Batch:
    """One collated batch on the device. The loss targets (``src``: flat positions of predicting
    tokens, ``labels``, ``owner`` rows) are computed on the host from the token lists, so the
    loss needs no device-to-host synchronisation (a boolean mask would, to learn its size)."""

    ids: torch.Tensor  # [B, T] right-padded
    attn: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    src: torch.Tensor  # [n] positions b*T+t of tokens that predict a next token
    labels: torch.Tensor  # [n] the token each predicts
    owner: torch.Tensor  # [n] its row


def collate(token_ids: list[list[int]], pad_id: int, device: torch.device) -> Batch:
    """Right-padded batch; on CUDA built in pinned host memory and copied without blocking."""
    lengths = [len(t) for t in token_ids]
    T = max(lengths)
    ids = torch.tensor([t + [pad_id] * (T - len(t)) for t in token_ids], dtype=torch.long)
    n = torch.tensor(lengths)
    attn = (torch.arange(T)[None, :] < n[:, None]).long()
    src = torch.tensor([b * T + t for b, m in enumerate(lengths) for t in range(m - 1)], dtype=torch.long)
    labels = torch.tensor([x for t in token_ids for x in t[1:]], dtype=torch.long)
    owner = torch.tensor([b for b, m in enumerate(lengths) for _ in range(m - 1)], dtype=torch.long)
    return Batch(*to_device((ids, attn, n, src, labels, owner), device))


def chunked_token_ce(model: Any, last: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-sample sum of next-token cross-entropy (nats) over real tokens; full-vocabulary logits
    exist for at most ``loss_chunk_tokens(vocab)`` tokens at a time."""
    dev = last.device  # the last layer's device (several with device_map="auto")
    src, labels, owner = batch.src.to(dev), batch.labels.to(dev), batch.owner.to(dev)
    h = last.reshape(-1, last.shape[-1]).index_select(0, src)
    sums = torch.zeros(batch.ids.shape[0], dtype=torch.float32, device=dev)
    step = loss_chunk_tokens(getattr(model.config, "vocab_size", 0) or 0)
    for s in range(0, h.shape[0], step):
        ce = F.cross_entropy(_logits(model, h[s:s + step]), labels[s:s + step], reduction="none")
        sums.index_add_(0, owner[s:s + step], ce)
    return sums.to(batch.ids.device)


def logits_token_ce(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sample CE sums from the model's own logits (fallback path)."""
    valid = torch.arange(ids.shape[1] - 1, device=ids.device)[None, :] < (lengths[:, None] - 1)
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    return (ce * valid).sum(1)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(b.abs().max().item(), 1.0)
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2 * scale))


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


class LanguageExtractor:
    def __init__(self, loaded: Loaded, pool: str):
        self.loaded, self.model, self.pool = loaded, loaded.model, pool
        self.device = next(self.model.parameters()).device
        self.tap = LayerTap(self.model, pool)
        tok = loaded.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.splits = 0
        self.full_logits = False  # set by self_check for heads featx cannot reproduce

    @torch.inference_mode()
    def run_batch(self, token_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled [B, L+1, D] float32 and per-sample CE sums [B], on the device; halves the batch
        on out-of-memory."""
        try:
            batch = collate(token_ids, self.pad_id, self.device)
            if self.full_logits:
                pooled, logits = self.tap.forward(batch.ids, batch.attn, batch.lengths, full_model=True)
                return pooled, logits_token_ce(logits, batch.ids, batch.lengths)
            pooled, last = self.tap.forward(batch.ids, batch.attn, batch.lengths)
            return pooled, chunked_token_ce(self.model, last, batch)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            del e
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(token_ids) == 1:
                raise OutOfMemoryError(
                    f"out of GPU memory on a single text of {len(token_ids[0])} tokens; use --qlora or a larger GPU"
                ) from None
            self.splits += 1
            half = len(token_ids) // 2
            a, b = self.run_batch(token_ids[:half]), self.run_batch(token_ids[half:])
            return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

    def self_check(self, token_ids: list[int]) -> list[str]:
        """Check, on one text, that the layer taps and the chunked loss reproduce the model's own
        ``output_hidden_states`` and logits; fall back to those where they do not."""
        notes: list[str] = []
        batch = collate([token_ids[:64]], self.pad_id, self.device)
        ids, attn, lengths = batch.ids, batch.attn, batch.lengths
        with torch.inference_mode():
            full = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True, use_cache=False)
            states = list(full.hidden_states)
            if states[-1].shape[-1] != states[0].shape[-1]:
                states = states[:-1]  # projected final state: compare the blocks only
            ref = torch.stack([pool_tokens(h, lengths, self.pool) for h in states], 1)
            ref_ce = F.cross_entropy(full.logits[0, :-1].float(), ids[0, 1:], reduction="sum")
            pooled, last = self.tap.forward(ids, attn, lengths)
            pooled = pooled[:, : ref.shape[1]]
            if self.tap.use_hooks and not _close(pooled, ref):
                self.tap.use_hooks = False
                notes.append("layer taps differ from output_hidden_states; using output_hidden_states")
                pooled, last = self.tap.forward(ids, attn, lengths)
                pooled = pooled[:, : ref.shape[1]]
            if not _close(pooled, ref):
                raise RuntimeError(f"{self.loaded.model.config.model_type}: pooled features differ from the model's hidden states")
            ce = chunked_token_ce(self.model, last, batch)[0]
            if not _close(ce, ref_ce):
                self.full_logits = True
                notes.append("chunked loss differs from the model's logits; using full logits")
        return notes

    def extract(self, texts: list[str], max_batch_size: int | None, token_budget: int,
                progress: Callable[[int], None] | None = None) -> Extraction:
        t0 = time.perf_counter()
        tok = self.loaded.tokenizer
        limit = max_positions(self.model.config)
        tokenized = tokenize(tok, texts, limit)
        token_ids = tokenized.ids
        lengths = [len(t) for t in token_ids]
        plan = plan_batches(lengths, max_batch_size, token_budget)
        notes = self.self_check(max(token_ids, key=len))
        L1 = self.model.config.num_hidden_layers + 1
        dtype = getattr(torch, self.loaded.dtype)
        t1 = time.perf_counter()
        done: list[tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = []
        for batch in plan.batches:  # results stay in flight; the device never waits for the host
            pooled, ce = self.run_batch([token_ids[i] for i in batch])
            done.append((batch, to_host(pooled, dtype), to_host(ce, torch.float32)))
            if progress:
                progress(len(batch))
        finish(self.device)
        feats = torch.empty(len(texts), L1, done[0][1].shape[-1], dtype=dtype)
        ce_sum = torch.zeros(len(texts))
        for batch, pooled, ce in done:
            index = torch.tensor(batch)
            feats[index], ce_sum[index] = pooled, ce
        t2 = time.perf_counter()
        n_pred = torch.tensor([max(n - 1, 0) for n in lengths], dtype=torch.float32)
        n_bytes = torch.tensor([max(n, 1) for n in tokenized.read_bytes], dtype=torch.float32)
        per_loss = ce_sum / n_pred  # NaN for single-token texts: nothing to predict
        per_bpb = ce_sum * LOG2E / n_bytes
        T = max(lengths)
        mask = (torch.arange(T)[None, :] >= (T - torch.tensor(lengths))[:, None]).long()
        tensors = {"feats": feats, "num_params": self.loaded.num_params, "mask": mask,
                   "loss": per_loss.nanmean(), "bpb": per_bpb[n_pred > 0].mean()}
        info = {"batch_plan": plan.summary(), "padding_efficiency": round(plan.padding_efficiency(lengths), 4),
                "tokens": sum(lengths), "max_tokens": T, "max_positions": limit,
                "truncated_rows": tokenized.truncated, "oom_splits": self.splits,
                "layer_pooling": "hooks" if self.tap.use_hooks else "output_hidden_states",
                "loss": "full_logits" if self.full_logits else "chunked",
                "final_layer": "last block (final state is projected)" if self.tap.projected_final else "final norm",
                "self_check": notes, "timings": {"tokenize_plan_s": round(t1 - t0, 3), "extract_s": round(t2 - t1, 3)}}
        return Extraction(tensors, info)
