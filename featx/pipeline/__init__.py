"""Orchestration above extraction and storage: which artifact a model's features go to, and the
run that skips, extracts, commits and records failures."""
