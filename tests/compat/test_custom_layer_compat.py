"""PEFT's experimental dynamic dispatch, ``LoraConfig._register_custom_module({ModuleType: LayerClass})``: a
module type LoRA does not know is adapted by a user's layer class (here a subclass of LoRA's ``Linear``), it
trains, a second adapter joins it, and its files move both ways with the reference peft 0.21.2 (registered on
the loading config too, as in PEFT) with identical outputs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import peft.tuners.lora
import peftkit.tuners.lora
import pytest
import torch
from torch import nn

import peftkit


class Projection(nn.Module):
    """Computes like ``nn.Linear(10, 20, bias=False)`` without being one."""

    def __init__(self) -> None:
        super().__init__()
        self.in_features, self.out_features = 10, 20
        self.weight = nn.Parameter(torch.randn(20, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin0, self.proj, self.lin1 = nn.Linear(10, 10), Projection(), nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.proj(torch.relu(self.lin0(x)))))


class KitLayer(peftkit.tuners.lora.Linear):
    pass


class RefLayer(peft.tuners.lora.Linear):
    pass


def _config(lib: ModuleType, **fields: Any) -> Any:
    config = lib.LoraConfig(target_modules=["lin0", "proj", "lin1"], init_lora_weights=False, **fields)
    config._register_custom_module({Projection: KitLayer if lib is peftkit else RefLayer})
    return config


def test_custom_layer_adapts_unknown_module_and_trains() -> None:
    with pytest.warns(UserWarning, match="custom layer KitLayer"):
        model = peftkit.get_peft_model(Net(), _config(peftkit))
    layer = model.base_model.model.proj
    assert isinstance(layer, KitLayer) and isinstance(layer.base_layer, Projection)
    assert type(model.base_model.model.lin0) is peftkit.tuners.lora.Linear
    before = layer.lora_A["default"].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 10)).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(layer.lora_A["default"].weight, before)
    model.add_adapter("second", _config(peftkit, r=4))  # the custom layer takes a second adapter itself
    assert model.base_model.model.proj is layer and sorted(layer.lora_A) == ["default", "second"]


@pytest.mark.parametrize(
    ("source", "target"), [(peft, peftkit), (peftkit, peft)], ids=["peft->peftkit", "peftkit->peft"]
)
def test_custom_layer_files_move_both_ways(source: ModuleType, target: ModuleType, tmp_path: Path) -> None:
    saved = source.get_peft_model(Net(), _config(source))
    saved.save_pretrained(tmp_path)
    config = target.LoraConfig.from_pretrained(tmp_path)
    config._register_custom_module({Projection: KitLayer if target is peftkit else RefLayer})
    loaded = target.PeftModel.from_pretrained(Net(), tmp_path, config=config)
    assert isinstance(loaded.base_model.model.proj, KitLayer if target is peftkit else RefLayer)
    x = torch.randn(5, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), saved(x))
        assert not torch.allclose(saved(x), Net()(x))  # the adapter does change the output


def test_registration_is_not_written_to_the_file(tmp_path: Path) -> None:
    peftkit.get_peft_model(Net(), _config(peftkit)).save_pretrained(tmp_path)
    assert "_custom_modules" not in (tmp_path / "adapter_config.json").read_text()
    with pytest.raises(peftkit.TargetingError, match="Projection"):  # unregistered: the type is refused, as before
        peftkit.PeftModel.from_pretrained(Net(), tmp_path)
