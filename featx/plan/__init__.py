"""Pure planning: which rows go in which batch, how much memory a model needs, which GPU fits.

Nothing here imports torch; the same functions serve local extraction and Kubernetes sizing.
"""
