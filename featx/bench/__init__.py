"""Benchmarks of featx's extraction against a faithful re-implementation of the reference
(platonic-rep ``extract_features.py``) loop. Not imported by featx itself; nothing here is timed by
the test suite (``tests/test_bench.py`` checks correctness only)."""
