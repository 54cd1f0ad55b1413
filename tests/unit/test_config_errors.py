"""Bad config values and bad targets: clear library errors (ValueError subclasses, as PEFT raises)."""

from __future__ import annotations

import pytest

import peftkit as peft
from peftkit.errors import ConfigError, TargetingError


@pytest.mark.parametrize("r", [0, -1, 2.5, "8", True, None])
def test_bad_rank(r) -> None:
    with pytest.raises(ConfigError, match=r"LoraConfig\.r must be"):
        peft.LoraConfig(r=r)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, "0.1"])
def test_dropout_outside_unit_interval(dropout) -> None:
    with pytest.raises(ConfigError, match=r"lora_dropout must be (in \[0, 1\)|a number)"):
        peft.LoraConfig(lora_dropout=dropout)


def test_unknown_bias() -> None:
    with pytest.raises(ConfigError, match="bias must be one of 'none', 'all', 'lora_only'"):
        peft.LoraConfig(bias="some")


@pytest.mark.parametrize("init", ["bogus", "pissa_niter_", 3])
def test_bad_init_lora_weights(init) -> None:
    with pytest.raises(ConfigError, match="init_lora_weights"):
        peft.LoraConfig(init_lora_weights=init)


def test_layers_pattern_needs_layers_to_transform() -> None:
    with pytest.raises(ConfigError, match="layers_pattern is only used together with layers_to_transform"):
        peft.LoraConfig(layers_pattern="layers")
    peft.LoraConfig(layers_pattern="layers", layers_to_transform=[0])


def test_layers_to_transform_with_regex_targets() -> None:
    with pytest.raises(ConfigError, match="regex"):
        peft.LoraConfig(target_modules=r".*q_proj", layers_to_transform=[0])


def test_bad_rank_pattern_value() -> None:
    with pytest.raises(ConfigError, match="rank_pattern"):
        peft.LoraConfig(rank_pattern={"q_proj": 0})


def test_unknown_task_type_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"task_type='NOPE' is not a known task.*CAUSAL_LM"):
        peft.LoraConfig(task_type="NOPE")


def test_unknown_peft_type() -> None:
    with pytest.raises(ConfigError, match=r"peft_type='NOPE'.*known methods: .*LORA"):
        peft.PeftConfig.from_dict({"peft_type": "NOPE"})


def test_errors_are_value_errors_for_peft_code() -> None:
    with pytest.raises(ValueError):
        peft.LoraConfig(r=0)


def test_targets_that_match_nothing_list_module_names(toy, unchanged) -> None:
    model = toy()
    check = unchanged(model)
    with pytest.raises(TargetingError, match="not found in the base model") as info:
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["query", "value"]))
    assert "'query'" in str(info.value)
    assert "layers.0.q_proj" in str(info.value) and "lm_head" in str(info.value)
    check()


def test_unknown_architecture_needs_target_modules(toy, unchanged) -> None:
    model = toy("no-such-arch")
    check = unchanged(model)
    with pytest.raises(TargetingError, match="No default target_modules for model type 'no-such-arch'") as info:
        peft.get_peft_model(model, peft.LoraConfig())
    assert "q_proj" in str(info.value), "the message suggests the model's module names"
    check()


def test_known_architecture_uses_default_targets(toy) -> None:
    model = peft.get_peft_model(toy(), peft.LoraConfig())
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}


def test_unadaptable_target_type(toy, unchanged) -> None:
    model = toy()
    check = unchanged(model)
    with pytest.raises(TargetingError, match=r"'layers\.0' is a Block"):
        peft.get_peft_model(model, peft.LoraConfig(target_modules=["0"]))
    check()


def test_get_peft_model_does_not_mutate_the_config(toy) -> None:
    config = peft.LoraConfig(target_modules="all-linear")
    peft.get_peft_model(toy(), config)
    assert config.target_modules == "all-linear"
    assert config.base_model_name_or_path is None
