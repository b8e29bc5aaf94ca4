"""Shared pytest set-up: adapter-contract classes are parametrised over their CONFIGS."""

import os

import pytest
import torch
from hypothesis import settings

# Tests use tiny tensors, for which one thread is faster than two (thread start-up dominates).
torch.set_num_threads(1)

# Property tests run few examples by default (CI has 2 cores; derandomized there so a run is
# repeatable); HYPOTHESIS_PROFILE=stress runs many.
settings.register_profile("fast", max_examples=30, deadline=None, derandomize="CI" in os.environ)
settings.register_profile("stress", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    configs = getattr(metafunc.cls, "CONFIGS", None)
    if configs is not None and "config" in metafunc.fixturenames:
        metafunc.parametrize("config", configs, ids=[str(i) for i in range(len(configs))])


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
