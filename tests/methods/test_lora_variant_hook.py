"""The LoRA-variant hook (``methods/lora/variant.py``): a variant's forward, merge and refusal replace plain LoRA's
for its adapters only, and the fused fast path steps aside for them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import MergeError, UnsupportedError
from peftkit.methods.lora import variants
from peftkit.methods.lora.variant import LoraVariant


class DoubledUpdate(LoraVariant):
    """A toy variant: the LoRA update counts twice, ``y = base(x) + 2 s B A x`` (merge: ``W + 2 s B A``)."""

    name = "doubled"

    def adapt_output(self, layer: Any, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        return result + 2 * layer.lora_out(x, adapter)

    def delta_weight(self, layer: Any, adapter: str) -> torch.Tensor:
        return 2 * layer.plain_delta_weight(adapter)


class Unmergeable(DoubledUpdate):
    mergeable = False


def build_doubled(config: Any, name: str, module: nn.Module) -> LoraVariant | None:
    return (Unmergeable if config.megatron_core == "unmergeable" else DoubledUpdate)() if "0" in name else None


@pytest.fixture
def toy_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(variants.VARIANT_BUILDERS, "layer_replication", f"{__name__}:build_doubled")
    monkeypatch.setattr(peftkit.LoraConfig, "unsupported_fields", ())


def model_and_input() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)), torch.randn(3, 6)


def test_variant_forward_and_merge_replace_plain_lora(toy_variant: None) -> None:
    base, x = model_and_input()
    config = peftkit.LoraConfig(target_modules=["0", "2"], init_lora_weights=False, layer_replication=[[0, 1]])
    model = peftkit.get_peft_model(base, config)
    first, second = model.base_model.model[0], model.base_model.model[2]
    assert isinstance(first.lora_variant["default"], DoubledUpdate) and "default" not in second.lora_variant
    A0, B0 = first.factor_tensors("default")
    A2, B2 = second.factor_tensors("default")
    s = first.scaling["default"]
    hidden = torch.relu(x @ (first.weight + 2 * s * B0 @ A0).T + first.bias)
    expected = hidden @ (second.weight + s * B2 @ A2).T + second.bias
    torch.testing.assert_close(model(x), expected)
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(x), expected)


def test_unmergeable_variant_refuses_before_writing(toy_variant: None) -> None:
    base, x = model_and_input()
    config = peftkit.LoraConfig(
        target_modules=["0"], init_lora_weights=False, layer_replication=[[0, 1]], megatron_core="unmergeable"
    )
    model = peftkit.get_peft_model(base, config)
    before = model(x)
    with pytest.raises(MergeError, match="cannot be merged"):
        model.merge_adapter()
    torch.testing.assert_close(model(x), before)
    model.add_adapter("plain", peftkit.LoraConfig(target_modules=["0"]))
    model.delete_adapter("default")
    assert model.base_model.model[0].lora_variant == {}


def test_two_variants_together_are_refused(toy_variant: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(variants.VARIANT_BUILDERS, "megatron_config", f"{__name__}:build_doubled")
    base, _ = model_and_input()
    config = peftkit.LoraConfig(target_modules=["0"], layer_replication=[[0, 1]], megatron_config={"a": 1})
    with pytest.raises(UnsupportedError, match="do not combine"):
        peftkit.get_peft_model(base, config)
