"""The cached stacks of mixed LoRA batches never serve stale factors: after each way an adapter can change
(in place, a replaced weight or module, set_scale, delete and re-add, hot-swap, load_state_dict) a decode-shaped
mixed batch equals each sample run alone through its adapter, and differs from the batch before the change."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from tests.methods.test_lora_stacked import RANKS, alone, model_with_adapters

import peftkit
from peftkit.hotswap import hotswap_adapter
from peftkit.methods.lora import stacked

NAMES = ["c", "default", "b", "c", "__base__"]
IDS = torch.randint(0, 64, (len(NAMES), 1), generator=torch.Generator().manual_seed(6))


def mixed(model: peftkit.PeftModel, names: list[str] = NAMES) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS[: len(names)], adapter_names=names).logits


def assert_each_sample_alone(model: peftkit.PeftModel, got: torch.Tensor, names: list[str] = NAMES) -> None:
    torch.testing.assert_close(got, alone(model, names, IDS[: len(names)]))


def c_layers(model: peftkit.PeftModel) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "lora_B") and "c" in m.lora_B]


def in_place(model: peftkit.PeftModel, _tmp: object) -> None:
    with torch.no_grad():
        for layer in c_layers(model):
            layer.lora_A["c"].weight.mul_(-2)


def registered_weight(model: peftkit.PeftModel, _tmp: object) -> None:
    for layer in c_layers(model):
        factor = layer.lora_B["c"]
        factor.register_parameter("weight", torch.nn.Parameter(torch.randn_like(factor.weight), requires_grad=False))


def parameters_entry(model: peftkit.PeftModel, _tmp: object) -> None:
    """A new weight written straight into ``_parameters``, as accelerate's ``set_module_tensor_to_device``
    does: no registration hook sees it."""
    for layer in c_layers(model):
        params = layer.lora_A["c"]._parameters
        params["weight"] = torch.nn.Parameter(torch.randn_like(params["weight"]), requires_grad=False)


def delete_and_add(model: peftkit.PeftModel, _tmp: object) -> None:
    model.delete_adapter("c")
    config = peftkit.LoraConfig(
        task_type="CAUSAL_LM", r=RANKS["c"], lora_alpha=5, target_modules="all-linear", init_lora_weights=False
    )
    torch.manual_seed(11)
    model.add_adapter("c", config)


def hot_swap(model: peftkit.PeftModel, tmp: object) -> None:
    donor = model_with_adapters()
    with torch.no_grad():
        for name, param in donor.named_parameters():
            if ".lora_" in name and ".c." in name:
                param.normal_(generator=torch.Generator().manual_seed(12))
    donor.save_pretrained(str(tmp), selected_adapters=["c"])
    hotswap_adapter(model, f"{tmp}/c", adapter_name="c", torch_device="cpu")


def load_state_dict(model: peftkit.PeftModel, _tmp: object) -> None:
    state = {k: -3 * v for k, v in model.state_dict().items() if ".lora_B.c." in k}
    model.load_state_dict(state, strict=False)


def set_scale(model: peftkit.PeftModel, _tmp: object) -> None:
    for layer in c_layers(model):
        layer.set_scale("c", 2.5)


CHANGES: dict[str, Callable[[peftkit.PeftModel, object], None]] = {
    "in place": in_place,
    "registered weight": registered_weight,
    "weight put into _parameters": parameters_entry,
    "delete and re-add": delete_and_add,
    "hot-swap": hot_swap,
    "load_state_dict": load_state_dict,
    "set_scale": set_scale,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_mixed_batch_follows_each_kind_of_adapter_change(change: str, tmp_path) -> None:
    model = model_with_adapters()
    mixed(model, ["default", "b"])  # another set of slots, cached first: "c" is not in it
    before = mixed(model)
    CHANGES[change](model, tmp_path)
    after = mixed(model)
    assert not torch.allclose(before, after)
    assert_each_sample_alone(model, after)


def test_bounded_freshness_lists_still_see_every_edit(monkeypatch) -> None:
    """With room for one set of slots, alternating mixes replace each other's lists; an edit made while the
    other mix's list is held is still seen by the next call that reads the edited adapter."""
    monkeypatch.setattr(stacked, "_FLAT_CHECKS", 1)
    model = model_with_adapters()
    other = ["default", "b"]
    for sign in (-1.0, 2.0):
        mixed(model, other)
        mixed(model)
        mixed(model, other)
        in_place(model, None)
        with torch.no_grad():
            for layer in c_layers(model):
                layer.lora_B["c"].weight.mul_(sign)
        mixed(model, other)
        assert_each_sample_alone(model, mixed(model))
