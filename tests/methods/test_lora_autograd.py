"""The fused LoRA autograd function against plain autograd on the same formula (same dropout mask), its
dropout mask statistics, and what it saves for backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit
from peftkit.methods.lora import autograd
from peftkit.methods.lora.autograd import DropMask, LoraLinearFunction, lora_linear

T, IN, OUT, R = 12, 10, 7, 3


def tensors(dtype: torch.dtype = torch.float64, bias: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    return {
        "x": rand(2, T // 2, IN),
        "weight": rand(OUT, IN),
        "bias": rand(OUT) if bias else None,
        "lora_A": rand(R, IN),
        "lora_B": rand(OUT, R),
    }


def reference(t: dict[str, torch.Tensor], scaling: float, keep: torch.Tensor | None, p: float) -> torch.Tensor:
    """``x W^T + b + s B(A(x * keep / (1 - p)))`` with plain autograd."""
    dropped = t["x"] if keep is None else t["x"] * keep / (1 - p)
    return F.linear(t["x"], t["weight"], t["bias"]) + scaling * F.linear(F.linear(dropped, t["lora_A"]), t["lora_B"])


def grads(out: torch.Tensor, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    inputs = [v for v in t.values() if v is not None]
    return list(torch.autograd.grad(out, inputs, torch.ones_like(out)))


def keep_of(t: dict[str, torch.Tensor], p: float, seed: int) -> torch.Tensor:
    flat = t["x"].detach().reshape(-1, IN)
    return DropMask(flat, p, seed).zero_(torch.ones_like(flat)).view(t["x"].shape)


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("keep_positions", [True, False])
def test_output_and_gradients_match_plain_autograd(
    p: float, bias: bool, keep_positions: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(autograd, "KEEP_POSITIONS", keep_positions)  # dropped positions kept, or drawn again
    t = tensors(bias=bias)
    out = LoraLinearFunction.apply(*t.values(), 0.7, p, 1234)
    keep = keep_of(t, p, 1234) if p > 0 else None
    ref = reference(t, 0.7, keep, p)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads(out, t), grads(ref, t)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_gradcheck(p: float) -> None:
    t = tensors()
    assert torch.autograd.gradcheck(lambda *a: LoraLinearFunction.apply(*a, 0.5, p, 99), tuple(t.values()))


def test_transposed_weight_view_gets_its_gradient() -> None:
    """GPT-2 ``Conv1D`` stores ``W`` as ``(in, out)``; the layer passes ``W.t()`` and the gradient reaches it."""
    t = tensors()
    stored = t["weight"].detach().t().contiguous().requires_grad_()
    out = LoraLinearFunction.apply(t["x"], stored.t(), t["bias"], t["lora_A"], t["lora_B"], 0.7, 0.0, 0)
    (expected,) = torch.autograd.grad(reference(t, 0.7, None, 0.0).sum(), [t["weight"]])
    (got,) = torch.autograd.grad(out.sum(), [stored])
    torch.testing.assert_close(got, expected.t())


def test_only_requested_gradients_are_computed() -> None:
    t = tensors()
    t["weight"].requires_grad_(False)
    t["bias"].requires_grad_(False)
    out = LoraLinearFunction.apply(*t.values(), 0.7, 0.2, 5)
    ref = reference(t, 0.7, keep_of(t, 0.2, 5), 0.2)
    got = torch.autograd.grad(out.sum(), [t["x"], t["lora_A"], t["lora_B"]])
    want = torch.autograd.grad(ref.sum(), [t["x"], t["lora_A"], t["lora_B"]])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_drop_mask_is_bernoulli_and_seeded(p: float) -> None:
    like = torch.empty(400, 500)
    mask = DropMask(like, p, seed=7)
    dropped = mask.zero_(torch.ones_like(like))
    rate = 1 - float(dropped.mean())
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / like.numel())
    again = DropMask(like, p, seed=7).zero_(torch.ones_like(like))
    other = DropMask(like, p, seed=8).zero_(torch.ones_like(like))
    assert torch.equal(dropped, again) and not torch.equal(dropped, other)
    rows, cols = 1 - dropped.mean(1), 1 - dropped.mean(0)  # no structure along either axis
    assert float(rows.std()) < 3 * math.sqrt(p * (1 - p) / like.shape[1])
    assert float(cols.std()) < 3 * math.sqrt(p * (1 - p) / like.shape[0])


def test_inference_path_equals_formula_without_autograd() -> None:
    t = {k: (v.detach() if v is not None else None) for k, v in tensors(torch.float32).items()}
    with torch.no_grad():
        out = lora_linear(*t.values(), scaling=0.7)
        torch.testing.assert_close(out, reference(t, 0.7, None, 0.0))
        torch.testing.assert_close(lora_linear(*t.values(), scaling=torch.tensor(0.7)), out)


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct non-parameter storages autograd keeps after a forward of ``layer``."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum().backward()
    return sum(seen.values())


def test_lora_layer_with_dropout_saves_no_dropped_copy() -> None:
    """A training LoRA layer with dropout keeps its input, the rank-r hidden state and the dropped positions
    (int64, about ``p * numel`` of them), not ``x * mask``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    config = peftkit.LoraConfig(target_modules=["0"], r=4, lora_dropout=0.1, init_lora_weights=False)
    peftkit.inject_adapter_in_model(config, model)
    model.train()
    x = torch.randn(32, 64, requires_grad=True)
    positions, rest = divmod(saved_bytes(model, x) - (x.numel() * 4 + 32 * 4 * 4), 8)
    sigma = (x.numel() * 0.1 * 0.9) ** 0.5
    assert rest == 0 and abs(positions - x.numel() * 0.1) < 5 * sigma


def test_dropout_training_is_reproducible_and_unbiased() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16))
    peftkit.inject_adapter_in_model(peftkit.LoraConfig(target_modules=["0"], r=4, lora_dropout=0.3), model)
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_()
    model.train()
    x = torch.randn(4000, 16)
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(model(x), first)
    model.eval()
    expected = model(x)
    torch.testing.assert_close(first.mean(0), expected.mean(0), atol=0.1, rtol=0)
