"""lmc_lib: linear mode connectivity under the symmetries of neural networks.

    import lmc_lib as lmc
    spec = lmc.spec_for(model)
    al = lmc.weight_matching(a, b, classes="paper")
    curve = lmc.barrier(a, al.apply(b), test_data)

The top level holds what a user of the library needs. Authors of model families find the spec
and registry in :mod:`lmc_lib.spec` and :mod:`lmc_lib.family`; the solvers are in
:mod:`lmc_lib.solvers`; the optimal-transport view in :mod:`lmc_lib.ot` and
:mod:`lmc_lib.meanfield`; the book's recipes and tables in :mod:`lmc_lib.book`.
"""

from . import models
from .symmetry import Invertible, Orthogonal, Permutation, SemiPermutation, Transform
from .family import canonicalize, spec_for
from .transform import random_transform, transform, transform_state
from .alignment import CLASS_PRESETS, Alignment
from .matching import weight_matching
from .activations import activation_matching
from .learned import learned_matching
from .universe import learned_universe, universe_matching
from .lift import lift
from .barrier import BarrierCurve, barrier, barrier_strategy, interpolate
from .simplex import SimplexSurface, simplex_barrier
from .circuits import circuit_pair
from .data import TensorData, cifar10, digits, mnist, tiny_shakespeare
from .training import TrainConfig, evaluate, train
from .models import MLP, MLPConfig
from .io import load, save
from . import book, canonical, circuits, data, distributed, family, meanfield, ot, simplex, solvers, spec, universe

__version__ = "0.1.0"

__all__ = [
    "Permutation", "SemiPermutation", "Orthogonal", "Invertible", "Transform",
    "spec_for", "canonicalize", "transform", "transform_state", "random_transform",
    "Alignment", "CLASS_PRESETS", "weight_matching", "activation_matching", "learned_matching",
    "universe_matching", "learned_universe", "lift",
    "BarrierCurve", "barrier", "barrier_strategy", "interpolate", "circuit_pair",
    "SimplexSurface", "simplex_barrier",
    "TensorData", "mnist", "cifar10", "digits", "tiny_shakespeare",
    "TrainConfig", "train", "evaluate", "MLP", "MLPConfig",
    "save", "load",
    "models", "book", "canonical", "circuits", "data", "distributed", "family", "meanfield", "ot", "simplex",
    "solvers", "spec", "universe",
]
