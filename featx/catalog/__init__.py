"""Model catalog: modelsets and per-model facts, kept as YAML data."""

from featx.catalog.registry import Modelset, builtin_modelsets, catalog, get_spec, load_modelset, resolve
from featx.catalog.spec import ModelSpec

__all__ = ["ModelSpec", "Modelset", "builtin_modelsets", "catalog", "get_spec", "load_modelset", "resolve"]
