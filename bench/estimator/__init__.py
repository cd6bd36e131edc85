"""The memory estimator (``featx.plan.memory``) against live tensor bytes on a CPU; ``python -m bench.estimator``."""
