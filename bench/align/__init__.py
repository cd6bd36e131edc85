"""featx's batched alignment against the reference's per-layer-pair loop (``reference``); ``python -m bench.align``."""
