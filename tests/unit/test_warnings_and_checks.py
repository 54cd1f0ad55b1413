"""The warnings and checks PEFT users rely on: each says what is wrong, and a warned-about call changes nothing."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import peftkit as peft
from peftkit.errors import ConfigError, TargetingError


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize(
    "fields, named",
    [({"lora_alpha": 0}, "lora_alpha"), ({"alpha_pattern": {"q_proj": 0}}, "alpha_pattern['q_proj']")],
)
def test_zero_alpha_warns_and_really_freezes_the_output(toy, fields, named) -> None:
    with pytest.warns(UserWarning, match=re.escape(named) + " = 0 makes the scaling"):
        config = peft.LoraConfig(target_modules=["q_proj"], init_lora_weights=False, **fields)
    base = toy()
    ids = torch.randint(0, 12, (2, 5))
    expected = base(ids)
    model = peft.get_peft_model(base, config)
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)  # what the warning says: no effect at all


def test_positive_alpha_and_adalora_zero_alpha_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.LoraConfig(lora_alpha=16)
        peft.AdaLoraConfig(lora_alpha=0, total_step=10)  # AdaLoRA scales by the rank when alpha <= 0


def test_merge_when_all_merged_and_unmerge_when_none_merged_warn_and_change_nothing(toy) -> None:
    model = peft.get_peft_model(toy(), peft.LoraConfig(target_modules=["q_proj"], init_lora_weights=False))
    unmerged = _state(model)
    with pytest.warns(UserWarning, match="No adapter is merged"):
        model.unmerge_adapter()
    _assert_same_state(model, unmerged)
    model.merge_adapter()
    merged = _state(model)
    assert not torch.equal(merged["base_model.model.layers.0.q_proj.base_layer.weight"],
                           unmerged["base_model.model.layers.0.q_proj.base_layer.weight"])  # fmt: skip
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        model.merge_adapter()
    _assert_same_state(model, merged)  # merging twice would have added the delta twice
    model.unmerge_adapter()
    for key, value in unmerged.items():
        torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_pattern_keys_matching_no_target_warn_naming_them(toy, field) -> None:
    config = peft.LoraConfig(target_modules=["q_proj"], **{field: {"q_proj": 4, "k_projj": 2, r"layers\.7\..*": 3}})
    with pytest.warns(RuntimeWarning, match=rf"{field} keys \['k_projj', 'layers\\\\.7\\\\..\*'\] match none"):
        peft.get_peft_model(toy(), config)
    import peft as reference  # the oracle warns in the same category (its own wording)

    with pytest.warns(RuntimeWarning, match=field):
        reference.get_peft_model(toy(), reference.LoraConfig(target_modules=["q_proj"], **{field: {"k_projj": 2}}))


def test_pattern_keys_that_match_do_not_warn(toy) -> None:
    config = peft.LoraConfig(target_modules=["q_proj", "v_proj"], rank_pattern={r"layers\.1\.v_proj": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = peft.get_peft_model(toy(), config)
    assert model.base_model.model.layers[1].v_proj.r["default"] == 3


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt"])
def test_missing_modules_to_save_error_names_it_and_close_names(toy, unchanged, method) -> None:
    fields = {"modules_to_save": ["lm_haed"]}
    config = {
        "lora": lambda: peft.LoraConfig(target_modules=["q_proj"], **fields),
        "ia3": lambda: peft.IA3Config(target_modules=["q_proj"], feedforward_modules=[], **fields),
        "prompt": lambda: peft.PromptTuningConfig(
            num_virtual_tokens=2, token_dim=8, num_layers=2, num_attention_heads=2, **fields
        ),
    }[method]()
    model = toy()
    check = unchanged(model)
    with pytest.raises(TargetingError, match=r"modules_to_save names 'lm_haed'.*Close names in the model: lm_head"):
        peft.get_peft_model(model, config)
    check()


def test_ia3_invalid_feedforward_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"IA3Config\.feedforward_modules holds an invalid regular expression"):
        peft.IA3Config(target_modules=".*proj", feedforward_modules="(v_proj")
