"""``PeftWarning`` where the reference peft 0.21.2 raises it, and what follows: ``lora_bias=True`` on a base layer
without a bias warns at injection and refuses to merge (a ``RuntimeError``, before any layer changes: peftkit
used to drop the bias silently); a save of flattened LoRA factors (ungathered FSDP / ZeRO-3 shards) warns and
writes the file."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.tuners.tuners_utils import BaseTunerLayer


class NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 6, bias=False)
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.out = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(x))


def _lora_bias_model(lib: ModuleType) -> nn.Module:
    with pytest.warns(lib.PeftWarning) as caught:
        model = lib.get_peft_model(NoBias(), lib.LoraConfig(target_modules=["out", "lin", "conv"], lora_bias=True))
    names = {name for name in ("Linear", "Conv2d") if any(name in str(w.message) for w in caught)}
    assert names == {"Linear", "Conv2d"}  # one warning per bias-less layer type, naming it
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


@pytest.mark.parametrize("lib", [peft, peftkit], ids=["peft", "peftkit"])
def test_lora_bias_without_base_bias_warns_and_refuses_merge(lib: ModuleType) -> None:
    model = _lora_bias_model(lib)
    x = torch.randn(3, 6)
    expected = model(x)
    with pytest.raises(RuntimeError):
        model.merge_and_unload()
    if lib is peftkit:  # peftkit checks every layer before writing: nothing was merged
        assert not any(m.merged_adapters for m in model.modules() if isinstance(m, BaseTunerLayer))
        torch.testing.assert_close(model(x), expected)


def test_lora_bias_merge_refused_by_peftkit_with_its_error() -> None:
    model = _lora_bias_model(peftkit)
    with pytest.raises(peftkit.MergeError, match="lora_bias=True"):
        model.merge_adapter()


@pytest.mark.parametrize("lib", [peft, peftkit], ids=["peft", "peftkit"])
def test_flattened_factors_warn_and_still_write(lib: ModuleType, tmp_path: Path) -> None:
    model = lib.get_peft_model(NoBias(), lib.LoraConfig(target_modules=["lin"], r=2))
    model.base_model.model.lin.lora_A["default"].weight.data = torch.zeros(12)
    with pytest.warns(lib.PeftWarning, match="ZeRO-3"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "adapter_model.safetensors").exists()


def test_unflattened_save_does_not_warn(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    model = peftkit.get_peft_model(NoBias(), peftkit.LoraConfig(target_modules=["out"], lora_bias=True, r=2))
    model.save_pretrained(tmp_path)  # lora_B.bias is 1-D by nature: not a flattened factor
    assert not [w for w in recwarn if w.category is peftkit.PeftWarning]
