"""featx's benchmarks: a development tool beside the package, not part of it (``pyproject.toml``
installs ``featx*`` only). One sub-package per concern, each runnable as ``python -m bench.<name>``:
``extract`` (featx vs the reference extraction loop), ``align`` (featx vs the reference's alignment
loop), ``estimator`` (the memory estimator vs live tensor bytes), ``store`` (S3 transfers and scans);
``report`` turns ``bench/results/*.json`` into the README's table. The test suite imports from here
(the reference loops, the SeaweedFS starter) and checks correctness, never timings."""
