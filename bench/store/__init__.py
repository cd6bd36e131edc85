"""The S3 store on a local SeaweedFS: transfers and scans; ``python -m bench.store``."""
