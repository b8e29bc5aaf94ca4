"""lmc_lib: linear mode connectivity under the symmetries of neural networks.

    import lmc_lib as lmc
    spec = lmc.spec_for(model)
    al = lmc.weight_matching(a, b)
    curve = lmc.barrier(a, al.apply(b), test_data)
"""

from . import models
from .data import TensorData, cifar10, data_root, digits, mnist, mnist_loader, tiny_shakespeare
from .training import TrainConfig, evaluate, train
from .barrier import BarrierCurve, barrier, barrier_strategy, cross_entropy, interpolate
from .canonical import RMSNorm
from .family import Family, canonicalize, family_of, register_family, spec_for
from .matching import Alignment, fit_invertible, solve_assignment, weight_matching
from .activations import activation_matching
from .circuits import circuit_models, circuit_pair
from .models import MLP, MLPConfig
from .report import Table, barrier_table
from .recipes import (
    ALIGNMENT_CLASSES, PAPER_BARRIERS, RECIPES, GPTConfig, Recipe, TrainedPair, ViTConfig, alignment_paths,
    compare_with_paper, trained_pair,
)
from .ot import (
    InputMoments, activation_dimensions, cloud_dimension, effective_dimension, incoming_weights,
    input_moments, layer_dimensions, ot_matching, transport_permutation, wasserstein_distance,
)
from . import meanfield
from .spec import Axis, Probe, Space, SymmetrySpec
from .symmetry import Invertible, Orthogonal, Permutation, SemiPermutation, Transform
from .transform import random_transform, transform, transform_state

__version__ = "0.1.0"

__all__ = [
    "Permutation", "SemiPermutation", "Orthogonal", "Invertible", "Transform",
    "Axis", "Probe", "Space", "SymmetrySpec", "spec_for", "canonicalize", "Family", "family_of", "register_family",
    "RMSNorm",
    "transform", "transform_state", "random_transform",
    "Alignment", "weight_matching", "activation_matching", "solve_assignment", "fit_invertible",
    "circuit_pair", "circuit_models",
    "BarrierCurve", "barrier", "barrier_strategy", "interpolate", "cross_entropy",
    "MLP", "MLPConfig", "models",
    "TensorData", "data_root", "mnist", "cifar10", "digits", "mnist_loader", "tiny_shakespeare",
    "TrainConfig", "train", "evaluate",
    "Table", "barrier_table",
    "ViTConfig", "GPTConfig", "Recipe", "RECIPES", "TrainedPair", "trained_pair",
    "ALIGNMENT_CLASSES", "alignment_paths", "PAPER_BARRIERS", "compare_with_paper",
    "wasserstein_distance", "transport_permutation", "effective_dimension", "cloud_dimension",
    "InputMoments", "input_moments", "incoming_weights", "layer_dimensions", "activation_dimensions",
    "ot_matching", "meanfield",
]
