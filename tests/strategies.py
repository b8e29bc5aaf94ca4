"""Shared test helpers: hypothesis strategies for small MLPs and a seeded builder."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

import lmc_lib as lmc

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity")


@st.composite
def mlp_configs(
    draw, activations: tuple[str, ...] = ACTIVATIONS, max_depth: int = 4, min_width: int = 1, max_width: int = 24
) -> lmc.MLPConfig:
    """An MLPConfig with 1..max_depth hidden layers of width min_width..max_width and small in/out sizes."""
    return lmc.MLPConfig(
        in_features=draw(st.integers(min(min_width, 16), 16)),
        widths=tuple(draw(st.lists(st.integers(min_width, max_width), min_size=1, max_size=max_depth))),
        out_features=draw(st.integers(1, 8)),
        activation=draw(st.sampled_from(activations)),
        bias=draw(st.booleans()),
    )


def build_mlp(config: lmc.MLPConfig, seed: int) -> lmc.MLP:
    """An MLP initialised under ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return lmc.MLP(config)
