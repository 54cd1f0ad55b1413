"""OFT compatibility with the reference peft 0.21.2: adapters saved by one library load in the other with the
same outputs (unmerged and merged); both save the same files and count the same parameters. Conv2d is checked
on a 1x1 kernel, where the reference's unmerged forward is the rotation its merge computes; for larger kernels
peftkit matches the reference's merged model (see ``test_conv_kernel_3_matches_the_reference_merge``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output, randomise_adapter
from tests.compat._cross import Adapter, compat_tests

import peftkit

TARGETS = {"target_modules": ["q_proj", "v_proj", "down_proj"]}
BLOCKS = {"oft_block_size": 4, "r": 0}

CASES = [
    Adapter("llama", "OFTConfig", {**TARGETS, **BLOCKS, "task_type": "CAUSAL_LM"}),
    Adapter("by_count", "OFTConfig", {**TARGETS, "r": 2, "oft_block_size": 0}, name="other"),
    Adapter("exact_cayley", "OFTConfig", {**TARGETS, **BLOCKS, "use_cayley_neumann": False}),
    Adapter("neumann_3_terms", "OFTConfig", {**TARGETS, **BLOCKS, "num_cayley_neumann_terms": 3}),
    Adapter("block_share", "OFTConfig", {**TARGETS, **BLOCKS, "block_share": True}),
    Adapter("coft", "OFTConfig", {**TARGETS, **BLOCKS, "coft": True, "eps": 0.5}),
    Adapter("regex_bias", "OFTConfig", {"target_modules": r".*\.(k_proj|up_proj)", **BLOCKS, "bias": "oft_only"}),
    Adapter("modules_to_save", "OFTConfig", {**TARGETS, **BLOCKS, "modules_to_save": ["lm_head"]}),
    Adapter("embedding", "OFTConfig", {"target_modules": ["embed_tokens", "q_proj"], **BLOCKS}),
    Adapter("conv_1x1", "OFTConfig", {"target_modules": ["conv", "lin"], "oft_block_size": 3, "r": 0}, "convnet_1x1"),
]

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)


def test_conv_kernel_3_matches_the_reference_merge() -> None:
    """On a 3x3 Conv2d peftkit convolves with the rotated filter: the reference's merged model, unmerged or
    merged in peftkit (the reference's unmerged forward sums overlapping rotated patches instead)."""
    config = {"target_modules": ["conv"], "oft_block_size": 9, "r": 0}
    reference = peft.get_peft_model(build_model("convnet"), peft.OFTConfig(**config))
    randomise_adapter(reference)
    with pytest.warns(UserWarning, match="folds overlapping patches"):
        ours = peftkit.get_peft_model(build_model("convnet"), peftkit.OFTConfig(**config))
    ours.load_state_dict(reference.state_dict())
    inputs = model_inputs("convnet")
    expected = model_output(reference.eval().merge_and_unload(), inputs)
    torch.testing.assert_close(model_output(ours.eval(), inputs), expected, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model_output(ours.merge_and_unload(), inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("fields", "adjusted"),
    [({"oft_block_size": 5, "r": 0}, "oft_block_size=4"), ({"r": 3, "oft_block_size": 0}, "r=2")],
    ids=["block_size", "count"],
)
@pytest.mark.parametrize(("source", "target"), [(peft, peftkit), (peftkit, peft)], ids=["to_peftkit", "to_peft"])
def test_a_split_that_does_not_divide_moves_to_the_nearest_divisor_as_in_peft(
    fields: dict[str, int], adjusted: str, source: ModuleType, target: ModuleType, tmp_path: Path
) -> None:
    """``oft_block_size`` / ``r`` not dividing a width: both libraries warn and use the same nearest divisor
    (ties to the smaller), so that an adapter saved with such a config loads in the other with equal outputs."""
    config = {"target_modules": ["q_proj", "down_proj"], **fields}
    shapes = {}
    for lib in (peft, peftkit):
        with pytest.warns(UserWarning) as caught:
            model = lib.get_peft_model(build_model("llama"), lib.OFTConfig(**config))
        if lib is peftkit:
            assert any(adjusted in str(w.message) for w in caught)
        shapes[lib] = {k: v.shape for k, v in model.state_dict().items() if "oft_R" in k}
        if lib is source:
            randomise_adapter(model)
            model.save_pretrained(tmp_path)
            saved = model.eval()
    assert shapes[peftkit] == shapes[peft]
    with pytest.warns(UserWarning):
        loaded = target.PeftModel.from_pretrained(build_model("llama"), tmp_path)
    inputs = model_inputs("llama")
    expected = model_output(saved, inputs)
    torch.testing.assert_close(model_output(loaded, inputs), expected, atol=1e-5, rtol=0)
