"""LoHa against a formula oracle on Linear, Conv1d and Conv2d (flat and CP kernels, grouped, 1x1, reflect
padding): ``y = op(x, W + s * (W1a W1b) * (W2a W2b))`` with ``s = alpha / r``; factor shapes, initialisation,
``rank_pattern`` / ``alpha_pattern``, two active adapters, and merging."""

from __future__ import annotations

import pytest
import torch
from tests.methods._lycoris import LAYERS, apply_weight, cp, factors_of, one_layer

import peftkit as peft
from peftkit.methods.loha.layer import HadamardProduct


def loha_delta(f: dict[str, torch.Tensor], scale: float, shape: torch.Size) -> torch.Tensor:
    if "hada_t1" in f:
        first = cp(f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"])
        second = cp(f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"])
    else:
        first, second = f["hada_w1_a"] @ f["hada_w1_b"], f["hada_w2_a"] @ f["hada_w2_b"]
    return (scale * first * second).reshape(shape)


@pytest.mark.parametrize("effective", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_forward_and_merge_match_the_formula(kind: str, effective: bool) -> None:
    config = peft.LoHaConfig(target_modules=["0"], r=3, alpha=5, use_effective_conv2d=effective)
    base, model, x = one_layer(kind, config)
    weight = base[0].weight
    f = factors_of(model)
    kernel = tuple(weight.shape[2:])
    uses_core = effective and any(k != 1 for k in kernel)
    assert ("hada_t1" in f) == uses_core
    if uses_core:
        core = (3, 3, *kernel) if len(kernel) == 2 else (3, 3, kernel[0], 1)
        assert f["hada_t1"].shape == f["hada_t2"].shape == core
        assert f["hada_w1_a"].shape == (3, weight.shape[0]) and f["hada_w1_b"].shape == (3, weight.shape[1])
    else:
        assert f["hada_w1_a"].shape == (weight.shape[0], 3)
        assert f["hada_w2_b"].shape == (3, weight[0].numel())
    expected = apply_weight(base, x, weight + loha_delta(f, 5 / 3, weight.shape))
    assert not torch.allclose(expected, base(x), atol=1e-3)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)


def test_default_init_is_the_identity_and_false_is_random() -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 8))
    x = torch.randn(2, 12)
    expected = base(x)
    model = peft.get_peft_model(base, peft.LoHaConfig(target_modules=["0"], r=2))
    f = factors_of(model)
    assert torch.count_nonzero(f["hada_w2_b"]) == 0 and all(
        torch.count_nonzero(f[n]) for n in ("hada_w1_a", "hada_w2_a")
    )
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    model.add_adapter("random", peft.LoHaConfig(target_modules=["0"], r=2, init_weights=False))
    model.set_adapter("random")
    assert not torch.allclose(model(x), expected)


def test_patterns_and_two_active_adapters_add_their_deltas() -> None:
    config = peft.LoHaConfig(target_modules=["0"], r=2, alpha=4, rank_pattern={"0": 3}, alpha_pattern={"^0": 6})
    base, model, x = one_layer("linear", config)
    assert factors_of(model)["hada_w1_a"].shape == (8, 3)
    model.add_adapter("other", peft.LoHaConfig(target_modules=["0"], r=1, alpha=1, init_weights=False))
    model.base_model.set_adapter(["default", "other"])
    weight = base[0].weight
    delta = loha_delta(factors_of(model), 6 / 3, weight.shape) + loha_delta(
        factors_of(model, "other"), 1.0, weight.shape
    )
    torch.testing.assert_close(model(x), apply_weight(base, x, weight + delta), atol=1e-5, rtol=1e-5)
    model.merge_adapter(["default", "other"])
    torch.testing.assert_close(model.base_model.model[0].base_layer.weight, weight + delta, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(model.base_model.model[0].base_layer.weight, weight, atol=1e-6, rtol=0)


def test_hadamard_product_gradients_match_autograd_of_the_formula() -> None:
    """The product keeps only the factors for backward; its gradients are those of the plain formula."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(5, 2), (2, 7), (5, 2), (2, 7)]
    factors = [torch.randn(s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *f: HadamardProduct.apply(*f, 1.5), factors)
    upstream = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    plain = torch.autograd.grad(((factors[0] @ factors[1]) * (factors[2] @ factors[3]) * 1.5 * upstream).sum(), factors)
    fused = torch.autograd.grad((HadamardProduct.apply(*factors, 1.5) * upstream).sum(), factors)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b)
