"""featx's extractors against a faithful re-implementation of the reference extraction loop
(``reference``), same weights and inputs, in one process; ``python -m bench.extract``."""
