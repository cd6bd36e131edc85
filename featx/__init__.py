"""featx: per-layer pooled features of many pretrained models, and alignment between them."""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Verified features from a store; see :func:`featx.features.load`."""
    from featx.features import load as _load

    return _load(*args, **kwargs)


def __getattr__(name: str):
    """``featx.Alignment`` (see :class:`featx.align.alignment.Alignment`), imported on first use so
    that ``import featx`` stays light."""
    if name == "Alignment":
        from featx.align.alignment import Alignment

        return Alignment
    raise AttributeError(f"module 'featx' has no attribute {name!r}")
