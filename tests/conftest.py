"""Shared pytest set-up: adapter-contract classes are parametrised over their CONFIGS."""

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    configs = getattr(metafunc.cls, "CONFIGS", None)
    if configs is not None and "config" in metafunc.fixturenames:
        metafunc.parametrize("config", configs, ids=[str(i) for i in range(len(configs))])


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
