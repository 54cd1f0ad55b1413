"""Prefix tuning on every cache style (tests/methods/_prefix_models.py) against the reference peft 0.21.2.

An adapter made and saved by the reference loads in peftkit and gives the same logits and greedy generations;
one made by peftkit from the same config has the same ``adapter_config.json`` dimensions. Falcon with multi-query
attention, which the reference sizes wrongly from the config (it cannot run it), is sized by peftkit from the
cache the model writes; the reference then runs peftkit's file and agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from tests.methods._prefix_models import MODELS, build_prefix_model, prefix_inputs

import peftkit

pytestmark = pytest.mark.reference_peft
DIMENSIONS = ("num_layers", "num_attention_heads", "token_dim", "encoder_hidden_size", "num_transformer_submodules")


def _perturbed(model: Any) -> Any:
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen))
    return model.eval()


def _create(lib: Any, name: str) -> Any:
    config = lib.PrefixTuningConfig(task_type=MODELS[name][1], num_virtual_tokens=3)
    return _perturbed(lib.get_peft_model(build_prefix_model(name), config))


def _assert_same(expected_model: Any, got_model: Any, name: str) -> None:
    inputs = prefix_inputs(name)
    with torch.no_grad():
        expected, got = expected_model(**inputs).logits, got_model(**inputs).logits
    assert not torch.allclose(expected, build_prefix_model(name)(**inputs).logits, atol=1e-3)  # the prefix acts
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    if MODELS[name][1] != "SEQ_CLS":
        prompt = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        a = expected_model.generate(**prompt, max_new_tokens=4, do_sample=False)
        b = got_model.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert torch.equal(a, b)


def _dimensions(path: Path) -> dict[str, Any]:
    saved = json.loads((path / "adapter_config.json").read_text())
    return {key: saved[key] for key in DIMENSIONS}


@pytest.mark.parametrize("name", [n for n in MODELS if n != "falcon_multi_query"])
def test_reference_prefix_loads_in_peftkit_with_equal_outputs(name: str, tmp_path: Path) -> None:
    reference = _create(peft, name)
    reference.save_pretrained(tmp_path / "peft")
    loaded = peftkit.PeftModel.from_pretrained(build_prefix_model(name), tmp_path / "peft").eval()
    _assert_same(reference, loaded, name)
    _create(peftkit, name).save_pretrained(tmp_path / "peftkit")
    assert _dimensions(tmp_path / "peftkit") == _dimensions(tmp_path / "peft")


def test_falcon_multi_query_is_sized_from_its_cache_and_the_reference_agrees(tmp_path: Path) -> None:
    name = "falcon_multi_query"
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        _create(peft, name)(**prefix_inputs(name))  # sized from the config: two heads, where one is cached
    mine = _create(peftkit, name)
    assert (mine.peft_config["default"].num_attention_heads, mine.peft_config["default"].token_dim) == (1, 8)
    mine.save_pretrained(tmp_path)
    _assert_same(mine, peft.PeftModel.from_pretrained(build_prefix_model(name), tmp_path).eval(), name)
