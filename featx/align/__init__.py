"""Cross-model alignment of stored features: the reference's metrics, batched over layers."""

from featx.align.metrics import METRICS, SYMMETRIC, build_state, layer_scores, prepare_features, uses_topk

__all__ = ["METRICS", "SYMMETRIC", "build_state", "layer_scores", "prepare_features", "uses_topk"]
