"""AdaLoRA and OFT adapters in mixed-method models (``PeftMixedModel``) against the reference peft 0.21.2.

On one Llama, ``q_proj`` stacks LoRA > OFT > AdaLoRA > LoHa (four layers, OFT multiplicative in the middle):
identical state-dict keys and shapes, trainable tensors and printed counts; equal outputs for several subsets of
active adapters; merging gives the unmerged output (innermost layer first). On a 1x1 Conv2d, OFT stacks on LoRA
with PEFT's outputs; adapters saved separately combine alike; BOFT (not mixable in PEFT either) is refused."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from tests.compat._cross import printed_parameters
from tests.compat.test_mixed_compat import assert_same_output, assert_separate_files_combine_alike
from torch import nn

import peftkit

ATOL = 1e-5
ADAPTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("LoraConfig", {"target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}),
    "oft": ("OFTConfig", {"target_modules": ["q_proj", "o_proj"], "r": 2, "oft_block_size": 0, "init_weights": False}),
    "ada": ("AdaLoraConfig", {"target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, "total_step": 1}),
    "loha": ("LoHaConfig", {"target_modules": ["q_proj"], "r": 2, "init_weights": False}),
}
SUBSETS = [list(ADAPTERS), ["oft"], ["ada"], ["oft", "default"], ["oft", "ada"], ["loha", "oft"]]


def config(lib: ModuleType, name: str) -> Any:
    cls, fields = ADAPTERS[name]
    return getattr(lib, cls)(**fields)


def mixed(lib: ModuleType, kind: str = "llama", adapters: dict[str, Any] | None = None) -> Any:
    """A mixed model of ``kind`` with ``adapters`` (name -> config; default :data:`ADAPTERS`), all active."""
    adapters = adapters or {name: config(lib, name) for name in ADAPTERS}
    torch.manual_seed(0)
    first, *rest = adapters
    model = lib.get_peft_model(build_model(kind), adapters[first], adapter_name=first, mixed=True)
    for name in rest:
        model.add_adapter(name, adapters[name])
    model.set_adapter(list(adapters))
    return model.eval()


def both(kind: str = "llama", adapters: dict[ModuleType, dict[str, Any]] | None = None) -> tuple[Any, Any]:
    """The reference's mixed model and peftkit's, holding the same random weights."""
    reference = mixed(peft, kind, adapters and adapters[peft])
    ours = mixed(peftkit, kind, adapters and adapters[peftkit])
    randomise_adapter(reference)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.mark.filterwarnings("ignore:.*r. is not used in AdaLora:UserWarning")
def test_same_stacked_layers_trainable_tensors_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    reference, ours = mixed(peft), mixed(peftkit)
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj"  # LoHa > AdaLoRA > OFT > LoRA > Linear
    assert f"{q_proj}.base_layer.base_layer.oft_R.oft.weight" in mine
    assert f"{q_proj}.base_layer.lora_E.ada" in mine

    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in reference.named_parameters() if p.requires_grad
    }
    assert ours.get_nb_trainable_parameters() == reference.get_nb_trainable_parameters()
    assert printed_parameters(ours, capsys) == printed_parameters(reference, capsys)


@pytest.mark.filterwarnings("ignore:.*r. is not used in AdaLora:UserWarning")
def test_outputs_for_subsets_disabled_and_merged() -> None:
    reference, ours = both()
    x = model_inputs("llama")
    base = model_output(build_model("llama"), x)
    for subset in SUBSETS:
        expected = assert_same_output(reference, ours, subset, x, base)
        with ours.disable_adapter():  # (an OFT unmerge inverts R: the base weight comes back to rounding)
            torch.testing.assert_close(model_output(ours, x), base, atol=ATOL, rtol=0)
        # merged: the unmerged function (PEFT's own merge of a 4-deep stack does not always give it)
        ours.base_model.merge_adapter()
        torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0, msg=str(subset))
        ours.base_model.unmerge_adapter()
        torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0, msg=str(subset))
    reference.set_adapter(list(ADAPTERS))
    expected = model_output(reference, x)
    merged = ours.merge_and_unload(adapter_names=list(ADAPTERS))
    torch.testing.assert_close(model_output(merged, x), expected, atol=ATOL, rtol=0)


class PointwiseNet(nn.Module):
    """Two 1x1 Conv2d layers, ``(batch, 8, 5, 5) -> (batch, 6, 5, 5)``: OFT's blocks need several input channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 12, kernel_size=1)
        self.head = nn.Conv2d(12, 6, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


def conv_adapters(lib: ModuleType) -> dict[str, Any]:
    return {
        "low_rank": lib.LoraConfig(target_modules=["conv", "head"], r=2, init_lora_weights=False),
        "oft": lib.OFTConfig(target_modules=["conv", "head"], r=2, oft_block_size=0, init_weights=False),
        "lokr": lib.LoKrConfig(target_modules=["conv"], r=2, init_weights=False),
    }


def test_oft_stacked_on_a_1x1_conv_matches_the_reference() -> None:
    def pointwise(lib: ModuleType) -> Any:
        torch.manual_seed(0)
        adapters = conv_adapters(lib)
        model = lib.get_peft_model(PointwiseNet(), adapters.pop("low_rank"), adapter_name="low_rank", mixed=True)
        for name, adapter in adapters.items():
            model.add_adapter(name, adapter)
        return model.eval()

    reference, ours = pointwise(peft), pointwise(peftkit)
    randomise_adapter(reference)
    ours.load_state_dict(reference.state_dict())
    x = {"x": torch.randn(2, 8, 5, 5)}
    for subset in (["low_rank", "oft", "lokr"], ["oft"], ["low_rank", "oft"], ["oft", "lokr"]):
        reference.set_adapter(subset)
        ours.set_adapter(subset)
        expected = model_output(reference, x)
        torch.testing.assert_close(model_output(ours, x), expected, atol=ATOL, rtol=0, msg=str(subset))
    merged = ours.merge_and_unload()
    torch.testing.assert_close(model_output(merged, x), expected, atol=ATOL, rtol=0)


def test_oft_on_a_larger_kernel_refuses_to_wrap_and_boft_is_not_mixable() -> None:
    model = mixed(peftkit, "convnet", {"lora": peftkit.LoraConfig(target_modules=["conv"], init_lora_weights=False)})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(peftkit.UnsupportedError, match="3x3 Conv2d in a mixed model"):
        model.add_adapter("oft", peftkit.OFTConfig(target_modules=["conv"], r=3, oft_block_size=0))
    assert set(model.peft_config) == {"lora"}
    assert model.state_dict().keys() == before.keys()
    boft = {"target_modules": ["q_proj"], "boft_block_size": 4}
    reference = mixed(peft)
    with pytest.raises(ValueError, match="BOFT"):
        reference.add_adapter("boft", peft.BOFTConfig(**boft))
    with pytest.raises(peftkit.ConfigError, match="BOFT adapter cannot join a mixed model"):
        mixed(peftkit).add_adapter("boft", peftkit.BOFTConfig(**boft))


@pytest.mark.filterwarnings("ignore:.*r. is not used in AdaLora:UserWarning")
def test_oft_and_adalora_saved_separately_combine_in_both_libraries(tmp_path: Path) -> None:
    configs = {name: config(peft, name) for name in ("default", "oft", "ada")}
    assert_separate_files_combine_alike(tmp_path, configs, [["lora", "oft", "ada"], ["oft", "ada"], ["oft"]])


def test_deleting_several_adapters_is_all_or_nothing_as_in_the_reference() -> None:
    """``delete_adapter([a, b])`` with ``b`` merged: both libraries raise a ``ValueError`` and delete nothing;
    ``a`` alone then goes, and ``b`` after an unmerge."""
    held: dict[str, list[set[str]]] = {}
    for lib in (peft, peftkit):
        model = mixed(lib, "llama", {"low_rank": lib.LoraConfig(target_modules=["q_proj"])})
        model.add_adapter("loha", lib.LoHaConfig(target_modules=["v_proj"]))
        model.base_model.merge_adapter(adapter_names=["loha"])
        with pytest.raises(ValueError):
            model.delete_adapter(["low_rank", "loha"])
        layers = [m for m in model.modules() if hasattr(m, "_all_available_adapter_names")]
        steps = [set(model.peft_config), set().union(*(m._all_available_adapter_names() for m in layers))]
        model.delete_adapter(["low_rank"])
        model.base_model.unmerge_adapter()
        model.delete_adapter(["loha"])
        held[lib.__name__] = [*steps, set(model.peft_config)]
    assert held["peftkit"] == held["peft"] == [{"low_rank", "loha"}, {"low_rank", "loha"}, set()]
