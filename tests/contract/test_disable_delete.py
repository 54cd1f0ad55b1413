"""disable_adapter() and delete_adapter() give back the base model's outputs and module types."""

from __future__ import annotations

import pytest
import torch
from tests.contract._cases import output
from torch import nn


def module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


def test_disable_adapter_equals_base(case) -> None:
    model = case.peft()
    x = case.inputs()
    adapted = output(model, x)
    base = output(case.base(), x)
    with model.disable_adapter():
        torch.testing.assert_close(output(model, x), base, rtol=0, atol=0)
    torch.testing.assert_close(output(model, x), adapted, rtol=0, atol=0)


def test_disable_adapter_while_merged_equals_base(case) -> None:
    model = case.peft()
    x = case.inputs()
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(output(model, x), output(case.base(), x), rtol=1e-5, atol=1e-5)


def test_delete_only_adapter_restores_base(case) -> None:
    model = case.peft()
    x = case.inputs()
    model.delete_adapter("default")
    assert model.peft_config == {}
    inner = model.get_base_model()
    assert module_types(inner) == module_types(case.base())
    torch.testing.assert_close(output(model, x), output(case.base(), x), rtol=0, atol=0)


@pytest.mark.parametrize("deleted", ["default", "other"])
def test_delete_one_of_two_adapters(case, deleted: str) -> None:
    model = case.peft()
    case.add(model, "other", seed=2)
    kept = "other" if deleted == "default" else "default"
    model.set_adapter(kept)
    x = case.inputs()
    expected = output(model, x)
    keys_kept = set(model.get_adapter_state_dict(kept))
    model.delete_adapter(deleted)
    assert list(model.peft_config) == [kept]
    assert model.active_adapter == kept
    assert not any(f".{deleted}." in name for name, _ in model.named_parameters())
    assert set(model.get_adapter_state_dict(kept)) == keys_kept
    torch.testing.assert_close(output(model, x), expected, rtol=0, atol=0)
    model.delete_adapter(kept)
    assert module_types(model.get_base_model()) == module_types(case.base())
