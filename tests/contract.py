"""The adapter contract every model family must satisfy, tested once for all families.

A family's test module subclasses :class:`AdapterContract` with ``CONFIGS`` (small configurations,
nothing downloaded), ``build(config, seed)`` and ``inputs(model, generator)``. The contract checks:
the spec accounts for every tensor, every class the spec admits preserves the function under random
elements, weight matching recovers a planted permutation (and a planted orthogonal map of the residual
stream, where a model has one), and no public call modifies its inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import lmc_lib as lmc

CLASSES = ("permutation", "semi_permutation", "orthogonal", "invertible")


def outputs(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def max_relative_error(reference: Tensor, other: Tensor) -> float:
    reference, other = reference.detach(), other.detach()
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-6))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


class AdapterContract:
    CONFIGS: list = []
    #: relative tolerance on outputs of a function-preserving transform (float32 models)
    TOLERANCE = 1e-5
    #: widening factor used for semi-permutations and rectangular orthogonal maps
    EXPAND = 1.5

    def build(self, config, seed: int) -> nn.Module:
        raise NotImplementedError

    def inputs(self, model: nn.Module, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def test_spec_accounts_for_every_tensor(self, config):
        model = self.build(config, 0)
        spec = lmc.spec_for(model)  # spec_for runs spec.check
        assert spec.spaces, "a family with no spaces has no symmetries to test"

    def test_function_preserved_by_every_admitted_class(self, config, generator):
        model = self.build(config, 0)
        spec = lmc.spec_for(model)
        x = self.inputs(model, generator)
        reference = outputs(model, x)
        admitted = {c for s in spec.spaces.values() for c in s.classes}
        for kind in CLASSES:
            if kind not in admitted:
                continue
            for expand in (1.0, self.EXPAND) if kind in ("semi_permutation", "orthogonal") else (1.0,):
                transforms = lmc.random_transform(spec, (kind,), generator, expand=expand)
                transforms = {n: t for n, t in transforms.items() if t.kind == kind}
                for names in _compatible_groups(spec, transforms):
                    new = lmc.transform(model, {n: transforms[n] for n in names})
                    error = max_relative_error(reference, outputs(new, x))
                    assert error <= self.TOLERANCE, f"{kind} (expand {expand}) on {names}: relative error {error:.2e}"

    def test_planted_permutation_recovered(self, config, generator):
        a = self.build(config, 0)
        spec = lmc.spec_for(a)
        planted = lmc.random_transform(spec, ("permutation",), generator)
        b = lmc.transform(a, planted)
        aligned = lmc.weight_matching(a, b).apply(b)
        for name, tensor in a.state_dict().items():
            torch.testing.assert_close(aligned.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

    def test_planted_orthogonal_residual_recovered(self, config, generator):
        a = self.build(config, 0)
        spec = lmc.spec_for(a)
        residual = spec.spaces.get("residual")
        if residual is None or "orthogonal" not in residual.classes:
            pytest.skip("no orthogonal residual stream in this model")
        classes = {s.group: ("orthogonal",) if s is residual else ("permutation",) for s in spec.spaces.values()}
        b = lmc.transform(a, lmc.random_transform(spec, classes, generator))
        aligned = lmc.weight_matching(a, b, classes=classes).apply(b)
        for name, tensor in a.state_dict().items():
            torch.testing.assert_close(aligned.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)

    def test_inputs_never_modified(self, config, generator):
        a, b = self.build(config, 0), self.build(config, 1)
        a_copy, b_copy = copy.deepcopy(a), copy.deepcopy(b)
        spec = lmc.spec_for(a)
        lmc.transform(a, lmc.random_transform(spec, ("permutation",), generator))
        lmc.canonicalize(a)
        lmc.weight_matching(a, b).apply(b)
        assert same_state(a, a_copy) and same_state(b, b_copy)


def _compatible_groups(spec: lmc.spec.SymmetrySpec, transforms: dict) -> list[list[str]]:
    """Split spaces into groups that one transform() call accepts (resizing spaces go alone)."""
    resizing = [n for n, t in transforms.items() if t.size_out != t.size_in]
    square = [n for n in transforms if n not in resizing]
    return ([square] if square else []) + [[n] for n in resizing]
