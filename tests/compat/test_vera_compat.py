"""VeRA compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with the
same outputs (unmerged and merged), with the projections saved (``base_model.vera_A`` / ``base_model.vera_B``)
or re-drawn from ``projection_prng_key``; both save the same files and count the same parameters, and both draw
the same projections."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import LIBS, Adapter, compat_tests

import peftkit
from peftkit.layers.shared import shared_tensors

LLAMA = {"r": 4, "target_modules": ["q_proj", "down_proj", "up_proj"], "init_weights": False}
CASES = [
    Adapter("llama", "VeraConfig", LLAMA),
    Adapter(
        "gpt2_conv1d", "VeraConfig", {"r": 3, "init_weights": False, "target_modules": ["c_attn", "c_proj"]}, "gpt2"
    ),
    Adapter(
        "other_name_prng_dropout", "VeraConfig", {**LLAMA, "projection_prng_key": 7, "vera_dropout": 0.1}, name="x"
    ),
    Adapter("bias_modules_to_save", "VeraConfig", {**LLAMA, "bias": "vera_only", "modules_to_save": ["lm_head"]}),
]
NOT_SAVED = Adapter("projection_not_saved", "VeraConfig", {**LLAMA, "save_projection": False, "projection_prng_key": 3})

# peft's notice while creating GPT-2 adapters (Conv1D forces fan_in_fan_out).
# Both libraries' notices that save_projection=False re-draws the projections (what the tests here check).
pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*save.*vera_A.*:UserWarning", "ignore:.*save_projection.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:Specified to not load vera_A:UserWarning"),
]

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, [*CASES, NOT_SAVED])


@pytest.mark.parametrize(("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")])
def test_projections_not_saved_are_redrawn_identically(source: str, target: str, tmp_path: Path) -> None:
    saved = NOT_SAVED.create(LIBS[source])
    saved.save_pretrained(tmp_path)
    loaded = LIBS[target].PeftModel.from_pretrained(build_model("llama"), tmp_path)
    inputs = model_inputs("llama")
    expected = model_output(saved, inputs)
    assert not torch.allclose(expected, model_output(build_model("llama"), inputs), atol=1e-3)
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=1e-5, rtol=0)


def two_adapters() -> tuple[Any, Any]:
    """The reference's and peftkit's Llama with VeRA adapters ``default`` and ``two`` (``two`` over fewer targets,
    reusing ``default``'s projections)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peft.get_peft_model(build_model("llama"), peft.VeraConfig(**LLAMA, projection_prng_key=5))
        ref.add_adapter("two", peft.VeraConfig(r=4, target_modules=["q_proj"], projection_prng_key=5))
    ours = peftkit.get_peft_model(build_model("llama"), peftkit.VeraConfig(**LLAMA, projection_prng_key=5))
    ours.add_adapter("two", peftkit.VeraConfig(r=4, target_modules=["q_proj"], projection_prng_key=5))
    return ref, ours


def test_both_libraries_draw_the_same_projections_for_every_adapter() -> None:
    """A further adapter uses the first one's projections (PEFT's rule), even over smaller targets."""
    ref, ours = two_adapters()
    held = shared_tensors(ours.base_model.model)
    for adapter in ("default", "two"):
        for name in ("vera_A", "vera_B"):
            assert torch.equal(held.get(adapter)[name], getattr(ref.base_model, name)[adapter]), (adapter, name)
            assert getattr(ours.base_model, name)[adapter] is held.get(adapter)[name]  # PEFT's attribute


def test_each_layer_exposes_the_models_one_projection_tensors_as_the_reference() -> None:
    """``layer.vera_A[adapter]`` / ``vera_B``: the whole shared projection, the very tensor the model holds (one
    object in every layer, also for a second adapter reusing the first one's), equal to the reference's."""
    ref, ours = two_adapters()
    theirs = dict(ref.named_modules())
    layers = [(n, m) for n, m in ours.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "vera_lambda_b")]
    assert layers
    for name, layer in layers:
        reference_layer = theirs[name]
        assert set(layer.vera_A) == set(reference_layer.vera_A) and set(layer.vera_B) == set(reference_layer.vera_B)
        for adapter in layer.vera_A:
            assert layer.vera_A[adapter] is ours.base_model.vera_A[adapter]
            assert layer.vera_B[adapter] is ours.base_model.vera_B[adapter]
            torch.testing.assert_close(layer.vera_A[adapter], reference_layer.vera_A[adapter], atol=0, rtol=0)
            torch.testing.assert_close(layer.vera_B[adapter], reference_layer.vera_B[adapter], atol=0, rtol=0)


def test_a_second_adapter_shares_the_first_ones_projection_tensors_as_in_the_reference() -> None:
    """Not a copy: ``vera_A["two"] is vera_A["default"]`` in every layer, in both libraries (one tensor per model),
    and deleting the first adapter leaves the second one's projections intact."""
    ref, ours = two_adapters()
    for model in (ref, ours):
        for name in ("vera_A", "vera_B"):
            assert getattr(model.base_model, name)["two"] is getattr(model.base_model, name)["default"]
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.vera_A["two"] is layer.vera_A["default"]
    x = model_inputs("llama")
    ours.set_adapter("two")
    before = model_output(ours, x)
    ours.delete_adapter("default")
    torch.testing.assert_close(model_output(ours, x), before, atol=0, rtol=0)
