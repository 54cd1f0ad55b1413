"""OFT against its formula: ``y = W (x R) + b`` for a row vector ``x``, ``R = diag(R_1, ..., R_r)``, each block
the Cayley transform of the skew matrix whose strict upper triangle is a row of ``oft_R.weight``:
exact ``(I - S)(I + S)^{-1}``, or PEFT's Neumann series ``I + 2 (S + ... + S^{m-1}) + S^m``, ``m = max(t - 1, 3)``.
Conv2d convolves with ``W' = W_flat R^T`` (the filter flattened channel-major)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft


def block(row: torch.Tensor, size: int, exact: bool, terms: int) -> torch.Tensor:
    """Oracle: one rotation block from its stored upper triangle."""
    upper = torch.zeros(size, size)
    rows, cols = torch.triu_indices(size, size, 1)
    upper[rows, cols] = row
    S, I = upper - upper.T, torch.eye(size)  # noqa: E741
    if exact:
        return (I - S) @ torch.linalg.inv(I + S)
    m = max(terms - 1, 3)
    series = sum(torch.linalg.matrix_power(S, j) for j in range(1, m))
    return I + 2 * series + torch.linalg.matrix_power(S, m)


def rotation(weight: torch.Tensor, size: int, count: int, exact: bool = False, terms: int = 5) -> torch.Tensor:
    """Oracle: the full block-diagonal ``R``; one stored row (``block_share``) serves every block."""
    blocks = [block(row, size, exact, terms) for row in weight]
    return torch.block_diag(*(blocks * count if len(blocks) == 1 else blocks))


VARIANTS = {
    "neumann_5": {},
    "neumann_3": {"num_cayley_neumann_terms": 3},
    "neumann_7": {"num_cayley_neumann_terms": 7},
    "exact": {"use_cayley_neumann": False},
    "block_share": {"block_share": True},
}


def adapted(base: nn.Module, size: int, **config: object) -> tuple[nn.Module, torch.Tensor]:
    """``(peft model, stored oft_R weight)`` with random blocks."""
    config = {"target_modules": ["0"], "oft_block_size": size, "r": 0, "init_weights": False, **config}
    model = peft.get_peft_model(nn.Sequential(base), peft.OFTConfig(**config))
    return model, model.base_model.model[0].rotation("default").weight.detach().clone()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_linear_rotates_the_input(variant: str) -> None:
    base = nn.Linear(12, 5)
    W, b = base.weight.detach().clone(), base.bias.detach().clone()
    model, weight = adapted(base, 4, **VARIANTS[variant])
    exact, terms = variant == "exact", int(VARIANTS[variant].get("num_cayley_neumann_terms", 5))
    R = rotation(weight, 4, 3, exact, terms)
    x = torch.randn(2, 3, 12)
    out = model(x)
    torch.testing.assert_close(out, (x @ R) @ W.T + b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x @ W.T + b, atol=1e-3)
    if exact:
        torch.testing.assert_close(R @ R.T, torch.eye(12), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("conv", "size"),
    [(nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1), 6), (nn.Conv2d(4, 3, kernel_size=1), 2)],
    ids=["3x3", "1x1"],
)
def test_conv2d_convolves_with_the_rotated_filter(conv: nn.Conv2d, size: int) -> None:
    W, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    geometry = {"stride": conv.stride, "padding": conv.padding}
    with pytest.warns(UserWarning) if conv.kernel_size[0] > 1 else nullcontext():
        model, weight = adapted(conv, size)
    R = rotation(weight, size, W[0].numel() // size)
    x = torch.randn(2, W.shape[1], 5, 5)
    out = model(x)
    torch.testing.assert_close(out, F.conv2d(x, (W.flatten(1) @ R.T).view_as(W), b, **geometry), rtol=1e-5, atol=1e-5)
    if conv.kernel_size[0] == 1:  # a 1x1 filter rotates each pixel's channel vector
        pixels = x.permute(0, 2, 3, 1) @ R
        torch.testing.assert_close(out, conv(pixels.permute(0, 3, 1, 2)), rtol=1e-5, atol=1e-5)


def test_zero_init_is_the_identity_and_merge_rotates_the_weight() -> None:
    base = nn.Linear(8, 3)
    W = base.weight.detach().clone()
    model = peft.get_peft_model(nn.Sequential(base), peft.OFTConfig(target_modules=["0"], oft_block_size=4))
    x = torch.randn(5, 8)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.oft_R["default"].weight.normal_()
    R = rotation(layer.oft_R["default"].weight.detach(), 4, 2)
    model.merge_adapter(safe_merge=True)
    torch.testing.assert_close(layer.get_base_layer().weight.detach(), W @ R.T, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight.detach(), W, rtol=1e-5, atol=1e-5)


def test_embedding_rotates_each_looked_up_vector_and_merge_rotates_the_table() -> None:
    base = nn.Embedding(10, 8)
    table = base.weight.detach().clone()
    model, weight = adapted(base, 4)
    R = rotation(weight, 4, 2)
    ids = torch.tensor([[1, 4, 9], [0, 0, 3]])
    out = model(ids)
    torch.testing.assert_close(out, table[ids] @ R, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, table[ids], atol=1e-3)
    model.merge_adapter()
    torch.testing.assert_close(base.weight.detach(), table @ R, rtol=1e-5, atol=1e-5)
