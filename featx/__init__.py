"""featx: per-layer pooled features of many pretrained models, and alignment between them."""

__version__ = "0.1.0"
