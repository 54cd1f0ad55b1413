"""PEFT's layer-level mixed batch: a LoRA layer called directly with ``adapter_names=[...]`` (one name per sample,
``"__base__"`` for none) gives the reference's output, row by row the output of that adapter alone, in eval and
in training mode (gradients reach each row's adapter); a name the layer does not hold is refused (the reference
runs such rows through the bare layer, silently)."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from torch import nn

import peftkit


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.lin = nn.Linear(8, 6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(ids))


def saved_reference(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = peft.get_peft_model(Toy(), peft.LoraConfig(target_modules=["emb", "lin"], init_lora_weights=False))
    model.add_adapter("other", peft.LoraConfig(target_modules=["emb", "lin"], r=4, init_lora_weights=False))
    model.save_pretrained(tmp_path)
    return tmp_path


def both_models(tmp_path: Path) -> tuple[nn.Module, nn.Module]:
    path = saved_reference(tmp_path)
    models = []
    for lib in (peft, peftkit):
        torch.manual_seed(1)
        base = Toy()
        model = lib.PeftModel.from_pretrained(base, path)
        model.load_adapter(path / "other", adapter_name="other")
        models.append(model.eval())
    ref, kit = models
    kit.base_model.model.load_state_dict(ref.base_model.model.state_dict())
    return ref, kit


@pytest.mark.parametrize("layer_name", ["emb", "lin"])
def test_layer_called_with_adapter_names_equals_reference(tmp_path: Path, layer_name: str) -> None:
    ref, kit = both_models(tmp_path)
    names = ["other", "__base__", "default", "other"]
    x = torch.randint(0, 12, (4, 5)) if layer_name == "emb" else torch.randn(4, 5, 8)
    ref_layer, kit_layer = getattr(ref.base_model.model, layer_name), getattr(kit.base_model.model, layer_name)
    with torch.no_grad():
        expected = ref_layer(x, adapter_names=names)
        got = kit_layer(x, adapter_names=names)
        torch.testing.assert_close(got, expected)
        for i, name in enumerate(names):  # each row as its adapter alone
            if name == "__base__":
                with kit.disable_adapter():
                    alone = kit_layer(x[i : i + 1])
            else:
                kit.set_adapter(name)
                alone = kit_layer(x[i : i + 1])
            torch.testing.assert_close(got[i : i + 1], alone)


def test_layer_adapter_names_in_training_and_unknown_names(tmp_path: Path) -> None:
    ref, kit = both_models(tmp_path)
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="does not hold"):
        kit.base_model.model.lin(x, adapter_names=["default", "nope", "other"])
    outputs = []
    for model in (ref, kit):
        model.train()
        for name, param in model.named_parameters():  # both adapters' factors train
            param.requires_grad_("lora_" in name)
        out = model.base_model.model.lin(x, adapter_names=["other", "__base__", "default"])
        out.square().sum().backward()
        layer = model.base_model.model.lin
        outputs.append((out.detach(), layer.lora_B["default"].weight.grad, layer.lora_B["other"].weight.grad))
    for got, expected in zip(outputs[1], outputs[0], strict=True):
        torch.testing.assert_close(got, expected)
