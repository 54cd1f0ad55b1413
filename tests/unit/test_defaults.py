"""Check ``peftkit.defaults`` against the reference ``peft`` mappings (a test-only oracle)."""

from __future__ import annotations

import dataclasses

import pytest

from peftkit import defaults

peft_constants = pytest.importorskip("peft.utils.constants")

REF_LORA = peft_constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
REF_IA3 = peft_constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
REF_IA3_FF = peft_constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

REQUIRED = (
    *("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2"),
    *("gemma3_text", "phi", "gpt2", "gpt_neox", "gptj", "gpt_bigcode", "opt"),
    *("bloom", "falcon", "bert", "roberta", "xlm-roberta", "deberta", "deberta-v2"),
    *("electra", "layoutlm", "t5", "mt5", "bart", "stablelm", "mpt", "codegen"),
    *("chatglm", "btlm", "blip-2"),
)

SHARED = sorted(set(defaults.DEFAULTS) & set(REF_LORA))


def test_required_architectures_are_covered() -> None:
    missing = [name for name in REQUIRED if name not in defaults.DEFAULTS]
    assert not missing


# peftkit's own rows (the reference has none): their names must exist in a tiny model of that type.
_DECODER = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
_ENCODER_DECODER = dict(
    d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
    encoder_ffn_dim=32, decoder_ffn_dim=32,
)  # fmt: skip
OWN_ROWS = {
    "phi3": _DECODER,
    "whisper": _ENCODER_DECODER,
    "mbart": _ENCODER_DECODER,
    "m2m_100": _ENCODER_DECODER,
    "starcoder2": {**_DECODER, "num_key_value_heads": 1},
    "distilbert": dict(dim=16, hidden_dim=32, n_layers=1, n_heads=2),
    "vit": {**_DECODER, "image_size": 8, "patch_size": 4},
}


def test_rows_beyond_the_reference_are_exactly_peftkits_own() -> None:
    assert set(defaults.DEFAULTS) - set(REF_LORA) - set(REF_IA3) == set(OWN_ROWS)


@pytest.mark.parametrize("model_type", sorted(OWN_ROWS))
def test_own_rows_name_modules_that_exist(model_type: str) -> None:
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.for_model(model_type, **OWN_ROWS[model_type]))
    names = [name for name, _ in model.named_modules()]
    row = defaults.DEFAULTS[model_type]
    for target in {*row.lora_targets, *row.ia3_targets}:
        assert any(n == target or n.endswith("." + target) for n in names), (model_type, target)


def test_every_reference_list_entry_is_covered() -> None:
    # Reference entries given as a regex string rather than a list are out of scope.
    listed = {name for name, value in REF_LORA.items() if isinstance(value, list)}
    assert listed <= set(defaults.DEFAULTS)


@pytest.mark.parametrize("model_type", SHARED)
def test_lora_targets_match_reference(model_type: str) -> None:
    ours = defaults.default_lora_targets(model_type)
    assert ours is not None
    assert len(ours) == len(set(ours))
    assert set(ours) == set(REF_LORA[model_type])


@pytest.mark.parametrize("model_type", sorted(set(defaults.DEFAULTS) - set(OWN_ROWS)))
def test_ia3_targets_match_reference(model_type: str) -> None:
    ours = defaults.default_ia3_targets(model_type)
    if model_type not in REF_IA3:
        assert ours is None
        return
    assert ours is not None
    targets, feedforward = ours
    assert set(targets) == set(REF_IA3[model_type])
    assert set(feedforward) == set(REF_IA3_FF[model_type])


@pytest.mark.parametrize("model_type", sorted(defaults.DEFAULTS))
def test_feedforward_is_subset_of_ia3_targets(model_type: str) -> None:
    row = defaults.DEFAULTS[model_type]
    assert set(row.ia3_feedforward) <= set(row.ia3_targets)
    assert row.lora_targets, "every row must have LoRA targets"


def test_spot_values() -> None:
    assert defaults.default_lora_targets("llama") == ["q_proj", "v_proj"]
    assert defaults.default_lora_targets("gpt2") == ["c_attn"]
    assert defaults.default_lora_targets("bert") == ["query", "value"]
    assert defaults.default_lora_targets("t5") == ["q", "v"]
    assert defaults.default_ia3_targets("mt5") == (["k", "v", "wi_1"], [])
    assert defaults.default_ia3_targets("mpt") is None


@pytest.mark.parametrize("model_type", [None, "", "not-a-model", "LLAMA", "vit_mae"])
def test_unknown_model_types_return_none(model_type: str | None) -> None:
    assert defaults.defaults_for(model_type) is None
    assert defaults.default_lora_targets(model_type) is None
    assert defaults.default_ia3_targets(model_type) is None


def test_returned_lists_are_fresh_copies() -> None:
    first = defaults.default_lora_targets("llama")
    assert first is not None
    first.append("o_proj")
    assert defaults.default_lora_targets("llama") == ["q_proj", "v_proj"]
    ia3 = defaults.default_ia3_targets("llama")
    assert ia3 is not None
    ia3[0].clear()
    assert defaults.default_ia3_targets("llama") == (
        ["k_proj", "v_proj", "down_proj"],
        ["down_proj"],
    )


def test_rows_are_frozen_and_validated() -> None:
    row = defaults.DEFAULTS["llama"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.lora_targets = ("x",)  # type: ignore[misc]
    with pytest.raises(ValueError):
        defaults.ArchitectureDefaults(("q",), ("q", "v"), ("wo",))
