"""Activated LoRA's forward against its formula: row ``i`` of a ``(batch, T, in)`` input gets ``s B A x`` on its
last ``offset_i`` positions only (none for ``None``; ``T = 1`` for a 2-D input), and ``generate``'s expanded rows
repeat their offsets."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import UsageError
from peftkit.methods.lora.variants.alora import position_mask


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _model() -> tuple[peftkit.PeftModel, nn.Linear]:
    torch.manual_seed(0)
    net = Net()
    base = nn.Linear(6, 5)
    base.load_state_dict(net.lin.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no task_type: aLoRA warns that offsets must be passed
        config = peftkit.LoraConfig(target_modules=["lin"], alora_invocation_tokens=[3], init_lora_weights=False, r=2)
    return peftkit.get_peft_model(net, config).eval(), base


def _formula(base: nn.Linear, layer: nn.Module, x: torch.Tensor, offsets: list[int | None]) -> torch.Tensor:
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]
    expected = base(x)
    T = x.shape[1] if x.dim() == 3 else 1
    for i, offset in enumerate(offsets):
        for t in range(T):
            if offset is not None and t >= T - min(offset, T):
                row = x[i, t] if x.dim() == 3 else x[i]
                delta = s * (B @ (A @ row))
                if x.dim() == 3:
                    expected[i, t] += delta
                else:
                    expected[i] += delta
    return expected


@pytest.mark.parametrize("offsets", [[2, None, 7], [1, 1, 1], [None, None, None], [9, 0, 3]])
@torch.no_grad()
def test_forward_matches_formula(offsets: list[int | None]) -> None:
    model, base = _model()
    x = torch.randn(3, 7, 6)
    out = model(x, alora_offsets=offsets)
    torch.testing.assert_close(out, _formula(base, model.base_model.model.lin, x, offsets))


@torch.no_grad()
def test_two_dimensional_input_is_one_position() -> None:
    model, base = _model()
    x = torch.randn(3, 6)
    torch.testing.assert_close(
        model(x, alora_offsets=[1, None, 4]), _formula(base, model.base_model.model.lin, x, [1, None, 4])
    )


@torch.no_grad()
def test_no_offsets_is_the_base_model() -> None:
    model, base = _model()
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(model(x), base(x))


def test_position_mask_repeats_offsets_for_expanded_rows() -> None:
    mask = position_mask([1, None], batch=4, length=3, device=torch.device("cpu"))
    expected = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    with pytest.raises(UsageError, match="offsets"):
        position_mask([1, 2], batch=3, length=3, device=torch.device("cpu"))
