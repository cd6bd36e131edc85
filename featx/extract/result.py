"""What an extractor hands to the store: the reference's tensors plus how they were made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import torch


@dataclass
class Extraction:
    """``tensors`` is the reference-compatible dict (``feats``, ``num_params``, LLM extras);
    ``info`` goes into the manifest (batch plan, timings, fallbacks, padding efficiency)."""

    tensors: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    layer_indices: list[int] = field(default_factory=list)  # the layers kept (--layers); empty: all

    @property
    def feats(self) -> Union[torch.Tensor, list[torch.Tensor]]:
        """``[N, L, D]``, or one ``[N, C_l]`` tensor per layer where widths differ (convnets)."""
        return self.tensors["feats"]
