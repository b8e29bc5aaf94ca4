"""Model families: each file describes one family to the algorithms (spec, rebuild, canonical form)."""

from .mlp import MLP, MLPConfig

__all__ = ["MLP", "MLPConfig"]
