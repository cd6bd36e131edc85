"""Input data: the image–caption rows every model of a run sees, in one fixed order."""

from featx.data.datasets import Rows, load_rows

__all__ = ["Rows", "load_rows"]
