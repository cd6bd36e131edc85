"""Extraction: load a model (one factory), run it over the rows, pool every layer."""
