"""Saving from a state dict handed in (as FSDP / ZeRO-3 users do), and keys free of wrapper prefixes (DDP's
``module.``, ``torch.compile``'s ``_orig_mod.``, FSDP1's ``_fsdp_wrapped_module.``) in both directions."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tests.distributed._common import lora_config, peft_model, tiny_llama

import peftkit
from peftkit.errors import CheckpointError
from peftkit.io.keys import match_keys, strip_wrapper_segments


def shifted(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict whose adapter values differ from the live ones (what a gather would return)."""
    return {k: v + 1.0 if "lora_" in k else v for k, v in state.items()}


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_save_pretrained_and_get_state_dict_use_the_given_state_dict(tmp_path: Path, prefix: str) -> None:
    model = peft_model()
    live = peftkit.get_peft_model_state_dict(model)
    given = {prefix + k: v for k, v in shifted(model.state_dict()).items()}
    model.save_pretrained(tmp_path, state_dict=given)
    stored = load_file(tmp_path / "adapter_model.safetensors")
    from_function = peftkit.get_peft_model_state_dict(model, state_dict=given)
    assert stored.keys() == live.keys() == from_function.keys()
    for key, value in live.items():
        torch.testing.assert_close(stored[key], value + 1.0)
        torch.testing.assert_close(from_function[key], value + 1.0)


def test_transformers_model_save_pretrained_uses_the_given_state_dict(tmp_path: Path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())  # adapters in place, no wrapper
    model.add_adapter(lora_config())
    live = model.get_adapter_state_dict()
    model.save_pretrained(tmp_path, state_dict=shifted(model.state_dict()))
    stored = load_file(tmp_path / "adapter_model.safetensors")
    assert {k.removeprefix("base_model.model.") for k in stored} == live.keys()
    for key, value in live.items():
        torch.testing.assert_close(stored["base_model.model." + key], value + 1.0)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: {}, "empty"),
        (lambda s: {k: v for k, v in s.items() if "lora_B" not in k}, "lacks"),
        (lambda s: {k: v.new_empty(0) if "lora_A" in k else v for k, v in s.items()}, "partitioned"),
        (lambda s: {k: v[:1] if "lora_A" in k else v for k, v in s.items()}, "partial"),
    ],
    ids=["empty", "missing", "partitioned", "shard"],
)
def test_a_state_dict_without_full_adapter_values_raises_and_writes_nothing(tmp_path: Path, edit, message) -> None:
    model = peft_model()
    with pytest.raises(CheckpointError, match=message):
        model.save_pretrained(tmp_path / "out", state_dict=edit(model.state_dict()))
    assert not (tmp_path / "out").exists()


def test_compiled_model_keys_have_no_orig_mod(tmp_path: Path) -> None:
    model = peft_model()
    expected = peftkit.get_peft_model_state_dict(model)
    compiled = torch.compile(model)  # never called: wrapping is enough to prefix its state dict
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    for unwrap in (False, True):
        assert peftkit.get_peft_model_state_dict(compiled, unwrap_compiled=unwrap).keys() == expected.keys()
    assert peftkit.get_peft_model_state_dict(compiled, state_dict=compiled.state_dict()).keys() == expected.keys()
    fresh = peft_model(adapter_seed=5)
    loaded = peftkit.set_peft_model_state_dict(torch.compile(fresh), {"_orig_mod." + k: v for k, v in expected.items()})
    assert not [key for key in loaded.missing_keys if ".lora_" in key]  # base keys are missing, as in PEFT
    again = peftkit.get_peft_model_state_dict(fresh)
    assert all(torch.equal(again[k], v) for k, v in expected.items())


def test_ddp_keys_have_no_module_prefix_both_ways() -> None:
    """A real DDP wrapper (one gloo process, in this process)."""
    from torch.nn.parallel import DistributedDataParallel

    store = tempfile.NamedTemporaryFile(delete=False)
    store.close()
    dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    try:
        model = peft_model()
        expected = peftkit.get_peft_model_state_dict(model)
        wrapped = DistributedDataParallel(model)
        assert all(k.startswith("module.") for k in wrapped.state_dict())
        assert peftkit.get_peft_model_state_dict(wrapped).keys() == expected.keys()
        assert peftkit.get_peft_model_state_dict(wrapped, state_dict=wrapped.state_dict()).keys() == expected.keys()
        fresh = DistributedDataParallel(peft_model(adapter_seed=5))
        peftkit.set_peft_model_state_dict(fresh, {"module." + k: v for k, v in expected.items()})
        again = peftkit.get_peft_model_state_dict(fresh)
        assert all(torch.equal(again[k], v) for k, v in expected.items())
    finally:
        dist.destroy_process_group()
        os.unlink(store.name)


def test_wrapper_segments_and_prefixes_literal() -> None:
    key = "model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.self_attn.q_proj.lora_A.default.weight"
    assert strip_wrapper_segments(key) == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert strip_wrapper_segments("model.lm_head.weight") == "model.lm_head.weight"
    known = {"model.layers.0.q.lora_A.default.weight", "module.x.lora_B.default.weight"}
    found = match_keys(
        [
            "_fsdp_wrapped_module.base_model.model.model.layers.0.q.lora_A.default.weight",
            "module.x.lora_B.default.weight",  # a real module named "module": kept, not peeled
            "module.base_model.model.other.weight",
        ],
        known,
    )
    assert found == {
        "_fsdp_wrapped_module.base_model.model.model.layers.0.q.lora_A.default.weight": (
            "model.layers.0.q.lora_A.default.weight"
        ),
        "module.x.lora_B.default.weight": "module.x.lora_B.default.weight",
    }
