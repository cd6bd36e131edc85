"""A faithful re-implementation of the reference extraction loop (platonic-rep
``extract_features.py`` with its ``models.load_tokenizer`` and ``utils`` helpers), kept as the
baseline featx is measured against. Its defects are reproduced on purpose:

- the tokenizer pads on the left with pad = EOS (when the tokenizer has no pad token), every batch
  is a slice of one ``padding="longest"`` encoding of the *whole* data set, so every batch is as
  long as the data set's longest text;
- batch size 4, the full ``CausalLM`` called with ``output_hidden_states=True`` and the model's
  default ``use_cache`` (the reference builds a KV cache it never uses), no ``position_ids``:
  absolute-position models (GPT-2, GPT-Neo) see shifted positions under left padding;
- all L+1 hidden states stacked, then ``avg``-pooled with the mask in the model's dtype (bf16 on
  GPUs); full-vocabulary logits for the whole padded batch for the loss.

Two differences, neither affecting outputs: the model and tokenizer are passed in (so featx and the
reference run the *same* weights in one process), and the tokenizer is copied before it is set to
left padding, so the caller's tokenizer is left as it was. The ``huggyllama`` special case (pad =
``[PAD]``) is not reproduced: benchmarks use random-weight models with their own tokenizer.

Also here: ``unpadded_language``, the ground truth for any family (one text at a time, no padding,
so no position or mask question arises), and ``reference_vision``, the reference's vision loop
(per-image CPU transform in the main loop, batch 4, ``create_feature_extractor`` on
``blocks.{i}.add_1``, CLS token of each block).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

REFERENCE_BATCH_SIZE = 4
LOG2E = math.log2(math.e)


def reference_tokenizer(tokenizer: Any) -> Any:
    """``models.load_tokenizer``: pad token = EOS when missing, padding side left (on a copy)."""
    tok = copy.deepcopy(tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def cross_entropy_loss(inputs: dict[str, torch.Tensor], outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``utils.cross_entropy_loss``: per-token CE (zero at padding) and its per-sample mean."""
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    mask = inputs["attention_mask"][:, :-1]
    loss = mask * criterion(outputs["logits"][:, :-1].permute(0, 2, 1), inputs["input_ids"][:, 1:])
    return loss, loss.sum(-1) / mask.sum(-1)


def cross_entropy_to_bits_per_unit(losses: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """``utils.cross_entropy_to_bits_per_unit(unit="byte")``: sum of CE in bits / UTF-8 bytes."""
    bits = (losses.cpu() * torch.log2(torch.tensor(math.e))).sum(1)
    n_bytes = torch.tensor([len(s.encode("utf-8")) for s in texts], dtype=torch.float32)
    return bits / n_bytes


def reference_language(model: Any, tokenizer: Any, texts: list[str], batch_size: int = REFERENCE_BATCH_SIZE,
                       pool: str = "avg", pad_to: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``extract_llm_features`` for one model: the saved dict (``feats [N, L+1, D]`` in the
    model's dtype, ``num_params``, ``mask``, ``loss``, ``bpb``) and counts of real/padded tokens.
    ``pad_to``: the token count of the longest text of the whole data set when ``texts`` are its
    first rows (the reference pads every batch to it); None pads to the longest of ``texts``."""
    tok = reference_tokenizer(tokenizer)
    tokens = (tok(texts, padding="longest", return_tensors="pt") if pad_to is None
              else tok(texts, padding="max_length", max_length=pad_to, return_tensors="pt"))
    device = next(model.parameters()).device
    feats, losses, bpb_losses = [], [], []
    for i in range(0, len(texts), batch_size):
        inputs = {k: v[i:i + batch_size].to(device).long() for k, v in tokens.items()}
        with torch.no_grad():
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                        output_hidden_states=True)
            loss, avg_loss = cross_entropy_loss(inputs, out)
            losses.extend(avg_loss.cpu())
            bpb_losses.extend(cross_entropy_to_bits_per_unit(loss.cpu(), texts[i:i + batch_size]))
            if pool == "avg":
                f = torch.stack(out["hidden_states"]).permute(1, 0, 2, 3)
                mask = inputs["attention_mask"].unsqueeze(-1).unsqueeze(1)
                f = (f * mask).sum(2) / mask.sum(2)
            elif pool in ("last", "none"):  # the reference's "none": position -1
                f = torch.stack([v[:, -1, :] for v in out["hidden_states"]]).permute(1, 0, 2)
            else:
                raise NotImplementedError(f"unknown pooling {pool}")
            feats.append(f.cpu())
        del out
    mask = tokens["attention_mask"].cpu()
    tensors = {"feats": torch.cat(feats), "num_params": sum(p.numel() for p in model.parameters()),
               "mask": mask, "loss": torch.stack(losses).mean(), "bpb": torch.stack(bpb_losses).mean()}
    info = {"real_tokens": int(mask.sum()), "padded_tokens": int(mask.numel()), "max_tokens": int(mask.shape[1]),
            "batch_size": batch_size, "batches": math.ceil(len(texts) / batch_size)}
    return tensors, info


@torch.no_grad()
def unpadded_language(model: Any, tokenizer: Any, texts: list[str], pool: str = "avg") -> dict[str, Any]:
    """Ground truth: each text alone, unpadded, pooled in float32 (``feats [N, L+1, D]``), with
    the reference's definitions of ``loss`` (mean over samples of per-token mean CE) and ``bpb``."""
    device = next(model.parameters()).device
    feats, ce_sums, n_pred = [], [], []
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]], device=device)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True, use_cache=False)
        hs = torch.stack([h[0].float() for h in out.hidden_states])  # [L+1, T, D]
        feats.append((hs.mean(1) if pool == "avg" else hs[:, -1]).cpu())
        ce_sums.append(float(F.cross_entropy(out.logits[0, :-1].float(), ids[0, 1:], reduction="sum")))
        n_pred.append(ids.shape[1] - 1)
        del out, hs
    ce = torch.tensor(ce_sums)
    n_bytes = torch.tensor([len(t.encode("utf-8")) for t in texts], dtype=torch.float32)
    return {"feats": torch.stack(feats), "loss": (ce / torch.tensor(n_pred, dtype=torch.float32)).mean(),
            "bpb": (ce * LOG2E / n_bytes).mean()}


def block_outputs(model: Any) -> tuple[Any, str]:
    """The reference's ``create_feature_extractor(model, return_nodes=blocks.{i}.add_1)``; forward
    hooks on the blocks (same tensors: ``add_1`` is a ViT block's last residual add) where FX
    tracing fails."""
    names = [f"blocks.{i}.add_1" for i in range(len(model.blocks))]
    try:
        from torchvision.models.feature_extraction import create_feature_extractor

        return create_feature_extractor(model, return_nodes=names), "fx:blocks.{i}.add_1"
    except Exception:  # noqa: BLE001 - any tracing failure falls back to hooks
        def run(x):
            outs = []
            handles = [b.register_forward_hook(lambda _m, _a, o: outs.append(o)) for b in model.blocks]
            try:
                model(x)
            finally:
                for h in handles:
                    h.remove()
            return dict(zip(names, outs))

        return run, "hooks:blocks[i]"


def reference_vision(model: Any, transform: Any, images: Sequence[Any], batch_size: int = REFERENCE_BATCH_SIZE,
                     extractor: tuple[Any, str] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """``extract_lvm_features``: images transformed one by one in the main loop, CLS token of every
    block output -> ``feats [N, L, D]``. The reference indexes ``range(i, i + batch_size)`` and so
    fails when N is not a multiple of the batch size; here the last batch is short instead.
    ``extractor``: a ``block_outputs(model)`` built beforehand (FX tracing takes seconds, once per
    model in the reference too), so a timing can leave it out."""
    extractor, how = extractor or block_outputs(model)
    p = next(model.parameters())
    feats = []
    for i in range(0, len(images), batch_size):
        with torch.no_grad():
            ims = torch.stack([transform(images[j]) for j in range(i, min(i + batch_size, len(images)))])
            out = extractor(ims.to(p.device, p.dtype))
            f = torch.stack([v[:, 0, :] for v in out.values()]).permute(1, 0, 2)
            feats.append(f.cpu())
    return torch.cat(feats), {"block_outputs": how, "batch_size": batch_size}
