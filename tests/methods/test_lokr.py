"""LoKr against a formula oracle on Linear, Conv1d and Conv2d: ``y = op(x, W + s * kron(W1, W2))`` with
``s = alpha / r``; which factors exist (``decompose_both``, full or low-rank ``W2``, CP core), the dimension
factorization (against the reference's own function), the three initialisations, and merging."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lokr.layer import factorization as reference_factorization
from tests.methods._lycoris import LAYERS, apply_weight, cp, factors_of, kron, one_layer

import peftkit as peft
from peftkit.methods.lokr.layer import factorization


def padded_kron(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``torch.kron``'s rule for a 2-d ``left (a, c)`` and a 3-d ``right (b, d, k)`` (``left`` read as
    ``(1, a, c)``): ``out[j, i*d + n, m*k + q] = left[i, m] right[j, n, q]``. The reference builds a Conv1d's full
    ``W2`` this way; the compatibility tests check that peftkit gives the reference's outputs there."""
    (a, c), (b, d, k) = left.shape, right.shape
    return (left[None, :, None, :, None] * right[:, None, :, None, :]).reshape(b, a * d, c * k)


def lokr_delta(f: dict[str, torch.Tensor], scale: float, shape: torch.Size) -> torch.Tensor:
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    if "lokr_w2" in f:
        w2 = f["lokr_w2"]
    elif "lokr_t2" in f:
        w2 = cp(f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])
    else:
        w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]
    product = padded_kron(w1, w2) if w2.dim() == 3 else kron(w1, w2)
    return (scale * product).reshape(shape)


SETTINGS = [
    {"r": 1},  # low-rank W2
    {"r": 1, "decompose_both": True},  # low-rank W1 too
    {"r": 8},  # full W2
    {"r": 1, "use_effective_conv2d": True},  # CP core on kernels > 1
    {"r": 2, "decompose_factor": 2},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[",".join(f"{k}={v}" for k, v in s.items()) for s in SETTINGS])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_forward_and_merge_match_the_formula(kind: str, settings: dict) -> None:
    config = peft.LoKrConfig(target_modules=["0"], alpha=3, **settings)
    base, model, x = one_layer(kind, config)
    weight = base[0].weight
    f = factors_of(model)
    r = settings["r"]
    a, b = factorization(weight.shape[0], settings.get("decompose_factor", -1))
    c, d = factorization(weight.shape[1], settings.get("decompose_factor", -1))
    assert ("lokr_w1_a" in f) == (settings.get("decompose_both", False) and r < max(a, c) / 2)
    assert ("lokr_w2" in f) == (r >= max(b, d) / 2)
    assert ("lokr_t2" in f) == ("lokr_w2" not in f and "use_effective_conv2d" in settings and weight[0, 0].numel() > 1)
    w1 = f.get("lokr_w1", f.get("lokr_w1_a"))
    assert w1 is not None and w1.shape[0] == a
    expected = apply_weight(base, x, weight + lokr_delta(f, 3 / r, weight.shape))
    assert not torch.allclose(expected, base(x), atol=1e-3)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.merge_and_unload()(x), expected, atol=1e-5, rtol=1e-5)


def test_factorization_is_the_reference_rule() -> None:
    for dimension in range(1, 130):
        for factor in (-1, 1, 2, 3, 4, 5, 8, 16, 200):
            assert factorization(dimension, factor) == reference_factorization(dimension, factor), (dimension, factor)


@pytest.mark.parametrize("init", [True, "lycoris"])
def test_identity_initialisations_zero_one_side(init: bool | str) -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 8))
    x = torch.randn(2, 12)
    expected = base(x)
    model = peft.get_peft_model(base, peft.LoKrConfig(target_modules=["0"], r=1, init_weights=init))
    f = factors_of(model)
    zero = "lokr_w2_b" if init == "lycoris" else "lokr_w1"
    assert torch.count_nonzero(f[zero]) == 0
    assert all(torch.count_nonzero(t) for name, t in f.items() if name != zero)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_random_initialisation_changes_the_output() -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 8))
    x = torch.randn(2, 12)
    expected = base(x)
    model = peft.get_peft_model(base, peft.LoKrConfig(target_modules=["0"], r=1, init_weights=False))
    assert all(torch.count_nonzero(t) for t in factors_of(model).values())
    assert not torch.allclose(model(x), expected)
