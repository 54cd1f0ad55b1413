"""The method-independent contract, for every row of ``_methods.METHOD_CASES`` (a new method added there inherits
it): save / load round trip, switching adapters, deleting the only adapter gives back the base model; for the
methods with adapter layers also merging and mixed batches."""

from __future__ import annotations

from pathlib import Path

import torch
from tests.contract._methods import MethodCase, output, with_adapter

import peftkit as peft


def fresh(method: MethodCase, adapter: str = "default", seed: int = 5) -> peft.PeftModel:
    return with_adapter(method, adapter, seed).eval()


def test_round_trip_gives_identical_outputs_and_state(method: MethodCase, tmp_path: Path) -> None:
    model = fresh(method)
    x = method.inputs()
    expected = output(model, x)
    base = output(method.base(), x)
    assert expected.shape != base.shape or not torch.allclose(expected, base), "the adapter must change the output"
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(method.base(), tmp_path)
    assert type(loaded) is type(model)
    torch.testing.assert_close(output(loaded, x), expected, rtol=0, atol=0)
    saved, reloaded = peft.get_peft_model_state_dict(model), peft.get_peft_model_state_dict(loaded)
    assert sorted(saved) == sorted(reloaded)
    for key, tensor in saved.items():
        assert torch.equal(tensor, reloaded[key]), key


def test_set_adapter_switches_outputs(method: MethodCase, tmp_path: Path) -> None:
    other = fresh(method, seed=9)
    other.save_pretrained(tmp_path)
    model = fresh(method, adapter="one")
    model.load_adapter(tmp_path, adapter_name="other")
    x = method.inputs()
    first = output(model, x)
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    torch.testing.assert_close(output(model, x), output(other, x), rtol=0, atol=0)
    model.set_adapter("one")
    torch.testing.assert_close(output(model, x), first, rtol=0, atol=0)


def test_delete_only_adapter_gives_back_the_base(method: MethodCase) -> None:
    model = fresh(method)
    base = method.base()
    model.delete_adapter("default")
    assert model.peft_config == {} and model.active_adapters == []
    inner = model.get_base_model()
    assert [type(m) for m in inner.modules()] == [type(m) for m in base.modules()]
    assert not any(p.requires_grad for p in model.parameters()), "no adapter left, nothing trains"


def test_merge_equals_unmerged_and_unload_gives_plain_modules(layer_method: MethodCase) -> None:
    model = fresh(layer_method)
    x = layer_method.inputs()
    unmerged = output(model, x)
    model.merge_adapter()
    torch.testing.assert_close(output(model, x), unmerged, rtol=1e-4, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(output(model, x), unmerged, rtol=1e-4, atol=1e-5)
    merged = model.merge_and_unload()
    assert [type(m) for m in merged.modules()] == [type(m) for m in layer_method.base().modules()]
    torch.testing.assert_close(output(merged, x), unmerged, rtol=1e-4, atol=1e-5)


def test_mixed_batch_sample_equals_its_single_adapter_model(layer_method: MethodCase, tmp_path: Path) -> None:
    other = fresh(layer_method, seed=9)
    other.save_pretrained(tmp_path)
    model = fresh(layer_method, adapter="one")
    model.load_adapter(tmp_path, adapter_name="other")
    route = ["other", "__base__", "one", "other"]
    x = {"input_ids": layer_method.inputs()["input_ids"][[0, 1, 0, 1]]}
    mixed = output(model, x, adapter_names=route)
    alone = {"one": output(fresh(layer_method, adapter="one"), x), "other": output(other, x)}
    alone["__base__"] = output(layer_method.base(), x)
    for i, name in enumerate(route):
        torch.testing.assert_close(mixed[i], alone[name][i], rtol=1e-5, atol=1e-5, msg=f"sample {i} ({name})")
