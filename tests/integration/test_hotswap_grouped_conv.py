"""Hot-swapping LoRA adapters of other ranks on a grouped convolution (``groups = g``): padding to rank ``R`` keeps
``A``'s rows in per-group blocks (``B``, a grouped 1x1 convolution, reads ``R / g`` of them per group), so the
padded adapter and the one swapped in compute what they computed unpadded."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit as peft
from peftkit.errors import HotswapError
from peftkit.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, groups=2)
        self.lin = nn.Linear(8 * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.conv(x).flatten(1))


def base() -> nn.Module:
    torch.manual_seed(0)
    return Grouped().eval()


def wrap(model: nn.Module, **fields) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grouped convolutions do not merge
        config = peft.LoraConfig(**{"target_modules": ["conv"], "init_lora_weights": False, **fields})
        return peft.get_peft_model(model, config)


def load(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(base(), path).eval()


@pytest.mark.parametrize("ranks", [(2, 6), (6, 2)], ids=["grow", "shrink"])
def test_padded_slot_and_swapped_adapter_keep_their_outputs(ranks: tuple[int, int], tmp_path: Path) -> None:
    x = torch.rand(2, 4, 8, 8)
    expected = []
    for index, rank in enumerate(ranks):
        torch.manual_seed(index + 1)
        model = wrap(base(), r=rank).eval()
        with torch.no_grad():
            expected.append(model(x))
        model.save_pretrained(tmp_path / f"adapter{index}")
    assert not torch.allclose(expected[0], expected[1], atol=1e-4)
    model = load(tmp_path / "adapter0")
    prepare_model_for_compiled_hotswap(model, target_rank=max(ranks))
    layer = model.base_model.model.conv
    assert layer.lora_A["default"].weight.shape[0] == max(ranks)
    assert layer.lora_B["default"].weight.shape[1] * 2 == max(ranks)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected[0], atol=1e-5, rtol=1e-5)
        hotswap_adapter(model, str(tmp_path / "adapter1"), adapter_name="default")
        torch.testing.assert_close(model(x), expected[1], atol=1e-5, rtol=1e-5)


def test_target_rank_not_a_multiple_of_groups_is_refused_before_any_change() -> None:
    model = wrap(Grouped(), r=2, target_modules=["conv", "lin"])
    shapes = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(HotswapError, match="groups"):
        prepare_model_for_compiled_hotswap(model, target_rank=3)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
