"""Model families: each file describes one family to the algorithms (spec, rebuild, canonical form)."""

from . import gpt2, vit  # noqa: F401  (registers the timm ViT and HF GPT-2 families; both import lazily)
from .mlp import MLP, MLPConfig

__all__ = ["MLP", "MLPConfig"]
