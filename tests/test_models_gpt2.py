"""The HF GPT-2 family: adapter contract over tiny configs, canonical form, exact width lift, refusals."""

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2DoubleHeadsModel, GPT2LMHeadModel, GPT2Model

import lmc_lib as lmc
from contract import AdapterContract, max_relative_error, outputs

VOCAB = 40


def gpt2_config(config: dict) -> GPT2Config:
    """GPT2Config from ``config`` (GPT2Config keywords plus 'canonical' and 'attention', which are dropped)."""
    keywords = {k: v for k, v in config.items() if k not in ("canonical", "attention")}
    made = GPT2Config(vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0, **keywords)
    made._attn_implementation = config.get("attention", "sdpa")
    return made


def gpt2(config: dict, seed: int = 0, *, canonical: bool | None = None, cls=GPT2LMHeadModel) -> nn.Module:
    """A tiny GPT-2 with every tensor perturbed (norm gains and shifts, biases away from their init)."""
    canonical = config.get("canonical", True) if canonical is None else canonical
    torch.manual_seed(seed)
    model = cls(gpt2_config(config))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.eval()
    return lmc.canonicalize(model) if canonical else model


def tokens(generator: torch.Generator, n: int = 3, length: int = 10) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=generator)


class TestGPT2(AdapterContract):
    CONFIGS = [
        dict(n_embd=16, n_layer=1, n_head=2),
        dict(
            n_embd=24,
            n_layer=2,
            n_head=3,
            n_inner=32,
            activation_function="gelu",
            tie_word_embeddings=False,
            attention="eager",
        ),
        dict(n_embd=32, n_layer=3, n_head=4, n_inner=24, activation_function="relu"),
        dict(
            n_embd=16,
            n_layer=2,
            n_head=4,
            n_inner=16,
            scale_attn_by_inverse_layer_idx=True,
            reorder_and_upcast_attn=True,
            attention="eager",
        ),
        dict(n_embd=16, n_layer=2, n_head=1, n_inner=20, scale_attn_weights=False),
        dict(n_embd=16, n_layer=2, n_head=2, n_inner=16, canonical=False),
        dict(n_embd=24, n_layer=1, n_head=4, n_inner=16, tie_word_embeddings=False, attention="eager", canonical=False),
    ]

    def build(self, config, seed):
        return gpt2(config, seed)

    def inputs(self, model, generator):
        return tokens(generator)

    def test_canonical_form_preserves_function(self, config, generator):
        model = gpt2(config, canonical=False)
        canon = lmc.canonicalize(model)
        x = tokens(generator)
        assert type(canon) is GPT2LMHeadModel and canon.lm_head.weight is not canon.transformer.wte.weight
        assert not canon.config.tie_word_embeddings
        assert max_relative_error(outputs(model, x), outputs(canon, x)) <= 1e-5
        fresh = lmc.canonicalize(gpt2(config, seed=1, canonical=False))
        fresh.load_state_dict(canon.state_dict())
        assert max_relative_error(outputs(canon, x), outputs(fresh, x)) <= 1e-6
        prompt = x[:, :4]
        greedy = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(canon.generate(prompt, **greedy), model.generate(prompt, **greedy))

    def test_residual_is_orthogonal_exactly_when_canonical(self, config, generator):
        assert lmc.spec_for(gpt2(config, canonical=True)).spaces["residual"].classes == ("permutation", "orthogonal")
        plain = lmc.spec_for(gpt2(config, canonical=False))
        assert plain.spaces["residual"].classes == ("permutation",)
        assert "residual" not in lmc.random_transform(plain, ("orthogonal",), generator)


def test_rectangular_orthogonal_lift_gives_an_equivalent_wider_gpt2(generator):
    narrow = gpt2(dict(n_embd=16, n_layer=2, n_head=4, n_inner=24))
    wide = lmc.transform(narrow, {"residual": lmc.Orthogonal.random(16, 32, generator)})
    x = tokens(generator)
    assert max_relative_error(outputs(narrow, x), outputs(wide, x)) <= 1e-5
    assert wide.config.n_embd == 32 and wide.config.layer_norm_epsilon == pytest.approx(0.5e-5)
    assert wide.transformer.h[0].attn.head_dim == 8
    # the config describes the lifted model: a GPT-2 built from it loads its state and agrees
    built = lmc.canonicalize(GPT2LMHeadModel(wide.config).eval())
    built.load_state_dict(wide.state_dict())
    assert max_relative_error(outputs(wide, x), outputs(built, x)) <= 1e-6
    greedy = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(wide.generate(x[:, :3], **greedy), narrow.generate(x[:, :3], **greedy))


def test_lift_refuses_a_width_the_heads_do_not_divide(generator):
    narrow = gpt2(dict(n_embd=16, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match="cannot hold n_head=4 equal heads"):
        lmc.transform(narrow, {"residual": lmc.Orthogonal.random(16, 18, generator)})


def test_headless_gpt2_keeps_its_output_coordinates(generator):
    config = dict(n_embd=16, n_layer=2, n_head=2)
    model = gpt2(config, canonical=False, cls=GPT2Model)
    canon = lmc.canonicalize(model)
    x = tokens(generator)
    reference = model(x).last_hidden_state
    assert max_relative_error(reference, canon(x).last_hidden_state) <= 1e-5
    spec = lmc.spec_for(canon)
    assert "residual" not in spec.spaces and "wte.weight" in spec.invariant
    moved = lmc.transform(canon, lmc.random_transform(spec, ("invertible",), generator))
    assert max_relative_error(reference, moved(x).last_hidden_state) <= 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_barrier_vmap_equals_loop(attention, generator):
    config = dict(n_embd=16, n_layer=2, n_head=2, attention=attention)
    a, b = gpt2(config, 0), gpt2(config, 1)
    x = tokens(generator, 4, 9)
    data = [(x[:, :-1], x[:, 1:])]
    fast = lmc.barrier(a, b, data, lambdas=5, strategy="vmap", progress=False)
    slow = lmc.barrier(a, b, data, lambdas=5, strategy="loop", progress=False)
    assert abs(lmc.barrier(a, a, data, lambdas=3, progress=False).barrier) < 1e-6
    assert abs(fast.losses - slow.losses).max() < 1e-5


def test_cross_attention_is_refused():
    with pytest.raises(ValueError, match=r"h\.0\.crossattention"):
        lmc.spec_for(gpt2(dict(n_embd=16, n_layer=1, n_head=2, add_cross_attention=True), canonical=False))


def test_foreign_norm_is_refused():
    model = gpt2(dict(n_embd=16, n_layer=1, n_head=2), canonical=False)
    model.transformer.h[0].ln_1 = nn.RMSNorm(16)
    with pytest.raises(ValueError, match=r"h\.0\.ln_1 is RMSNorm; only LayerNorm"):
        lmc.spec_for(model)


def test_other_gpt2_heads_are_refused():
    model = GPT2DoubleHeadsModel(gpt2_config(dict(n_embd=16, n_layer=1, n_head=2)))
    with pytest.raises(TypeError, match="no symmetry spec for GPT2DoubleHeadsModel"):
        lmc.spec_for(model)
