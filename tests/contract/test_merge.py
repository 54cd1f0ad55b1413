"""Merging for every case: merged == unmerged forward, unmerge restores the base weights, merge_and_unload
and unload give back plain module types."""

from __future__ import annotations

import torch
from tests.contract._cases import output
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper


def module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


def base_weights(model) -> dict[str, torch.Tensor]:
    """Every tensor of the model except the adapters' own, keyed without the wrapper parts."""
    state = model.get_base_model().state_dict()
    return {k.replace(".base_layer", ""): v.clone() for k, v in state.items() if ".lora_" not in k}


def test_merge_equals_unmerged_and_unmerge_restores(case) -> None:
    model = case.peft()
    x = case.inputs()
    unmerged = output(model, x)
    before = base_weights(model)
    model.merge_adapter()
    assert all(m.merged for _, m in model.named_modules() if isinstance(m, AdapterLayer))
    torch.testing.assert_close(output(model, x), unmerged, rtol=1e-4, atol=1e-5)
    model.unmerge_adapter()
    after = base_weights(model)
    assert after.keys() == before.keys()
    for key, tensor in before.items():
        torch.testing.assert_close(after[key], tensor, rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(output(model, x), unmerged, rtol=1e-5, atol=1e-6)


def test_merge_and_unload_returns_plain_modules(case) -> None:
    model = case.peft()
    x = case.inputs()
    expected = output(model, x)
    merged = model.merge_and_unload()
    assert module_types(merged) == module_types(case.base())
    assert not any(isinstance(m, (AdapterLayer, ModulesToSaveWrapper)) for m in merged.modules())
    assert merged.state_dict().keys() == case.base().state_dict().keys()
    torch.testing.assert_close(output(merged, x), expected, rtol=1e-4, atol=1e-5)


def test_unload_gives_back_the_base(case) -> None:
    model = case.peft()
    x = case.inputs()
    saved = model.get_adapter_state_dict()
    plain = model.unload()
    base = case.base()
    assert module_types(plain) == module_types(base)
    # modules_to_save wrappers become their trained copy (PEFT's rule); everything else is the base.
    copies = {k.removeprefix("base_model.model."): v for k, v in saved.items()}
    base.load_state_dict({k: v for k, v in copies.items() if k in base.state_dict()}, strict=False)
    torch.testing.assert_close(output(plain, x), output(base, x), rtol=0, atol=0)
