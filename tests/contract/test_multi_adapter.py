"""Several adapters in one model: set_adapter switches outputs, and each adapter computes exactly what a
model holding only that adapter computes."""

from __future__ import annotations

import torch
from tests.contract._cases import output, single_adapter_output

import peftkit as peft


def test_set_adapter_switches_outputs(case) -> None:
    model = case.peft()
    case.add(model, "other", seed=2)
    x = case.inputs()
    assert model.active_adapter == "default", "add_adapter must not change the active adapter"
    first = output(model, x)
    model.set_adapter("other")
    assert model.active_adapter == "other"
    second = output(model, x)
    assert not torch.allclose(first, second)
    for name, out in (("default", first), ("other", second)):
        config, state = model.peft_config[name], model.get_adapter_state_dict(name)
        torch.testing.assert_close(out, single_adapter_output(case, config, state, x), rtol=0, atol=0)
    model.set_adapter("default")
    torch.testing.assert_close(output(model, x), first, rtol=0, atol=0)


def test_second_adapter_survives_save_and_load(case, tmp_path) -> None:
    model = case.peft()
    case.add(model, "other", seed=2)
    model.save_pretrained(tmp_path)
    x = case.inputs()
    model.set_adapter("other")
    expected = output(model, x)
    loaded = peft.PeftModel.from_pretrained(case.base(), tmp_path)
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    assert loaded.active_adapter == "default"
    loaded.set_adapter("other")
    torch.testing.assert_close(output(loaded, x), expected, rtol=0, atol=0)
