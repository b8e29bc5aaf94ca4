"""Mean-field two-layer networks f(x) = (1/n) sum_i a_i tanh(w_i . x + b_i), trained by SGD.

Each hidden neuron is a particle theta_i = (w_i, b_i, a_i) in R^(d+2); the network is the average
of its particles (Mei, Montanari and Nguyen 2018). It is stored as an ordinary ``nn.Sequential``
``fc1 = Linear(d, n), act1 = Tanh, fc2 = Linear(n, 1, bias=False)`` whose output weights hold
a_i / n, so ``spec_for``, ``transform`` and ``barrier(loss_fn=square_loss)`` work unchanged.

Mean-field SGD moves every particle by its own gradient: theta_i <- theta_i - s n dL/dtheta_i
(the n undoes the 1/n in f). On the stored parameters this is plain SGD with step s n on fc1 and
s / n on fc2. Under it the particles of a wide network stay nearly i.i.d. (propagation of chaos),
which is what makes two independently trained networks linearly connected after OT matching.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .barrier import barrier, interpolate
from .data import TensorData
from .family import spec_for
from .matching import Alignment
from .ot import InputMoments, transport_permutation

__all__ = [
    "meanfield_net",
    "particles",
    "square_loss",
    "square_barrier",
    "TeacherTask",
    "teacher_data",
    "MeanFieldSGD",
    "train_meanfield",
    "train_pair",
    "particle_matching",
    "midpoint_error",
]


def _check_meanfield(model: nn.Module) -> int:
    """The width n of a mean-field net; ValueError for any other model."""
    fc1, fc2 = getattr(model, "fc1", None), getattr(model, "fc2", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc2.out_features == 1 and fc2.bias is None):
        raise ValueError(
            "expected a mean-field net from meanfield_net(): fc1 = Linear(d, n), act1 = Tanh, "
            "fc2 = Linear(n, 1, bias=False)"
        )
    return fc1.out_features


def meanfield_net(dim: int, width: int, *, seed: int, weight_std: float | None = None) -> nn.Sequential:
    """A mean-field net with i.i.d. particles: w_i ~ N(0, s^2 I_d), b_i ~ N(0, 1/4), a_i ~ N(0, 1).

    s = ``weight_std``, by default 1/sqrt(d) so that w_i . x has unit variance for x ~ N(0, I_d).
    """
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(dim, width), act1=nn.Tanh(), fc2=nn.Linear(width, 1, bias=False))
    )
    with torch.no_grad():
        std = dim**-0.5 if weight_std is None else weight_std
        model.fc1.weight.copy_(torch.randn(width, dim, generator=generator) * std)
        model.fc1.bias.copy_(torch.randn(width, generator=generator) / 2)
        model.fc2.weight.copy_(torch.randn(1, width, generator=generator) / width)
    return model


def particles(model: nn.Sequential) -> Tensor:
    """The particles theta_i = (w_i, b_i, a_i) as rows of an (n, d + 2) float64 matrix (a_i = n x stored weight)."""
    width = _check_meanfield(model)
    return torch.cat(
        [model.fc1.weight.double(), model.fc1.bias.double()[:, None], width * model.fc2.weight.double().T], dim=1
    ).detach()


def square_loss(output: Tensor, target: Tensor) -> Tensor:
    """Per-example loss (f(x) - y)^2 / 2 for outputs (N, 1) and targets (N,): the ``loss_fn`` of ``barrier``."""
    return 0.5 * (output.squeeze(-1) - target) ** 2


def square_barrier(a: nn.Module, b: nn.Module, data: TensorData, lambdas: int = 11) -> float:
    """The barrier max_l B_l of the square loss on ``data`` along theta_l = (1 - l) theta_A + l theta_B."""
    return barrier(a, b, data.batches(len(data)), lambdas, loss_fn=square_loss, progress=False).barrier


@dataclass(frozen=True)
class TeacherTask:
    """Regression on a teacher y = (1/m) sum_j a*_j tanh(w*_j . z), z ~ N(0, I_k), m = ``teacher_width``.

    The inputs are x = U z in R^dim for a random orthonormal U (dim x k), k = ``intrinsic_dim``
    (x = z when it is None): data on a k-dimensional subspace.
    """

    dim: int = 8
    intrinsic_dim: int | None = None
    teacher_width: int = 4
    train_size: int = 4000
    test_size: int = 2000

    def __post_init__(self) -> None:
        if self.intrinsic_dim is not None and not 1 <= self.intrinsic_dim <= self.dim:
            raise ValueError(f"TeacherTask: intrinsic_dim must lie in [1, dim={self.dim}], got {self.intrinsic_dim}")


def teacher_data(task: TeacherTask, *, seed: int = 0) -> tuple[TensorData, TensorData]:
    """Train and test sets of ``task``; the teacher, the subspace and the inputs are drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    k = task.intrinsic_dim or task.dim
    directions = torch.randn(task.teacher_width, k, generator=generator)
    directions = 2 * directions / directions.norm(dim=1, keepdim=True)  # |w*| = 2: a visibly nonlinear teacher
    heights = torch.randn(task.teacher_width, generator=generator)
    basis = torch.linalg.qr(torch.randn(task.dim, k, generator=generator))[0] if task.intrinsic_dim else torch.eye(k)
    z = torch.randn(task.train_size + task.test_size, k, generator=generator)
    x, y = z @ basis.T, torch.tanh(z @ directions.T) @ heights / task.teacher_width
    name = f"teacher-{task.dim}-{k}-{task.teacher_width}-{seed}"
    cut = task.train_size
    return TensorData(x[:cut], y[:cut], f"{name}-train"), TensorData(x[cut:], y[cut:], f"{name}-test")


@dataclass(frozen=True)
class MeanFieldSGD:
    """Minibatch SGD on the square loss: ``steps`` steps of ``batch_size`` examples (drawn with
    replacement), step size ``lr``."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 0.5


def train_meanfield(model: nn.Sequential, data: TensorData, config: MeanFieldSGD, *, seed: int) -> nn.Sequential:
    """A trained copy of ``model`` (the input is untouched): mean-field SGD, minibatches drawn from ``seed``.

    With pre-activations p = W x + b, h = tanh(p), f = c . h (c = a / n) and residuals r = (f - y) / B
    over a batch of B, the gradients of L = mean (f - y)^2 / 2 are dL/dc = h^T r and
    dL/dp = r c^T (1 - h^2); the steps are s n on (W, b) and s / n on c (closed form: no autograd).
    """
    width = _check_meanfield(model)
    trained = copy.deepcopy(model).eval()
    weight, bias, out = trained.fc1.weight, trained.fc1.bias, trained.fc2.weight[0]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(config.steps):
            index = torch.randint(len(data), (config.batch_size,), generator=generator)
            x, y = data.inputs[index], data.targets[index]
            hidden = torch.tanh(torch.addmm(bias, x, weight.T))
            residual = (hidden @ out - y) / config.batch_size
            grad_pre = torch.outer(residual, out) * (1 - hidden * hidden)
            out -= (config.lr / width) * (hidden.T @ residual)
            weight -= (config.lr * width) * (grad_pre.T @ x)
            bias -= (config.lr * width) * grad_pre.sum(0)
    return trained


def train_pair(
    data: TensorData,
    width: int,
    config: MeanFieldSGD,
    *,
    weight_std: float | None = None,
    seeds: tuple[int, int] = (0, 1),
) -> tuple[nn.Sequential, nn.Sequential]:
    """Networks A and B: independent initialisations and independent minibatch draws, one seed each."""
    dim = data.inputs.shape[1]
    nets = (meanfield_net(dim, width, seed=seed, weight_std=weight_std) for seed in seeds)
    return tuple(train_meanfield(net, data, config, seed=seed) for net, seed in zip(nets, seeds))


def particle_matching(a: nn.Sequential, b: nn.Sequential, *, moments: InputMoments | None = None) -> Alignment:
    """Align B's particles to A's by OT: pi minimises sum_i ||theta^A_i - theta^B_pi(i)||_M^2.

    M = I (Euclidean W_2 on (w, b, a), the construction of the mean-field theorem) or, with the
    input ``moments`` (``input_moments(a, data)["fc1"]``), M = diag(E[(x, 1)(x, 1)^T], 1): the (w, b)
    part is measured by the pre-activations it produces on the data.
    """
    metric = None
    if moments is not None:
        metric = torch.block_diag(moments.augmented, torch.ones(1, 1, dtype=torch.float64))
    permutation = transport_permutation(particles(a), particles(b), metric=metric)
    return Alignment({"fc1": permutation}, spec_for(a))


def midpoint_error(a: nn.Module, b: nn.Module, inputs: Tensor) -> float:
    """RMS over ``inputs`` of f_mid(x) - (f_A(x) + f_B(x)) / 2, f_mid the network at the parameter midpoint."""
    with torch.no_grad():
        gap = interpolate(a, b, 0.5)(inputs) - (a(inputs) + b(inputs)) / 2
    return float(gap.double().pow(2).mean().sqrt())
