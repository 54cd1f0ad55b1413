"""``convert_to_lora`` / ``save_as_lora``: LoKr, LoHa, VeRA and LoRA adapters converted to LoRA give the
reference's config, keys and factors (from the same adapter weights), a full-rank conversion reproduces the
adapter, both libraries load the converted files alike, and what cannot be converted is refused."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output

import peftkit
from peftkit.errors import ConfigError

CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "lokr": ("llama", "LoKrConfig", {"r": 4, "target_modules": ["q_proj", "down_proj"], "init_weights": False}),
    "loha": ("llama", "LoHaConfig", {"r": 4, "target_modules": ["k_proj", "up_proj"], "init_weights": False}),
    "vera": ("llama", "VeraConfig", {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_weights": False}),
    "lora": ("llama", "LoraConfig", {"r": 8, "target_modules": ["q_proj", "o_proj"], "init_lora_weights": False}),
    "lora_gpt2": ("gpt2", "LoraConfig", {"r": 4, "target_modules": ["c_attn"], "init_lora_weights": False,
                                         "fan_in_fan_out": True}),
    "lokr_mts": ("llama", "LoKrConfig", {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}),
}  # fmt: skip


def _reference_and_ours(case: str, tmp_path: Path) -> tuple[Any, Any]:
    """The reference's adapter with random weights, and the same adapter loaded into peftkit from its files."""
    kind, name, fields = CASES[case]
    ref = peft.get_peft_model(build_model(kind), getattr(peft, name)(**fields))
    if "modules_to_save" in fields:
        with torch.no_grad():
            for module in ref.modules():
                if isinstance(module, peft.utils.ModulesToSaveWrapper):
                    module.modules_to_save["default"].weight.mul_(-3.0)
    ref.save_pretrained(tmp_path / "source")
    ours = peftkit.PeftModel.from_pretrained(build_model(kind), tmp_path / "source")
    return ref.eval(), ours.eval()


def _convert(lib: ModuleType, model: Any, rank: float) -> tuple[Any, dict[str, torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # converting LoRA to LoRA warns on both sides: checked below
        return lib.convert_to_lora(model, rank=rank)


@pytest.mark.parametrize("rank", [2, 0.9])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_equals_reference(case: str, rank: float, tmp_path: Path) -> None:
    ref_model, our_model = _reference_and_ours(case, tmp_path)
    ref_config, ref_state = _convert(peft, ref_model, rank)
    our_config, our_state = _convert(peftkit, our_model, rank)
    for field in ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "modules_to_save"):
        assert getattr(our_config, field) == getattr(ref_config, field), field
    assert our_state.keys() == ref_state.keys()
    for key, tensor in ref_state.items():
        assert our_state[key].shape == tensor.shape and our_state[key].dtype == tensor.dtype, key
    for key in (k for k in ref_state if k.endswith("lora_A.weight")):
        b_key = key.replace("lora_A", "lora_B")
        ours, theirs = our_state[b_key] @ our_state[key], ref_state[b_key] @ ref_state[key]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # The converted adapter, loaded by each library into a fresh base, gives the same outputs.
    kind = CASES[case][0]
    outputs = []
    for lib, config, state in ((peft, ref_config, ref_state), (peftkit, our_config, our_state)):
        model = lib.get_peft_model(build_model(kind), config).eval()
        assert not lib.set_peft_model_state_dict(model, state).unexpected_keys
        outputs.append(model_output(model, model_inputs(kind)))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["lokr", "loha", "vera", "lora_gpt2"])
def test_full_rank_conversion_reproduces_the_adapter(case: str, tmp_path: Path) -> None:
    """At rank ``min(out, in)`` the SVD is exact: the LoRA adapter's outputs are the original adapter's."""
    _, model = _reference_and_ours(case, tmp_path)
    kind = CASES[case][0]
    expected = model_output(model, model_inputs(kind))
    with model.disable_adapter():
        base = model_output(model, model_inputs(kind))
    config, state = _convert(peftkit, model, 1.0)  # all the energy: every singular value
    converted = peftkit.get_peft_model(build_model(kind), config).eval()
    peftkit.set_peft_model_state_dict(converted, state)
    got = model_output(converted, model_inputs(kind))
    assert not torch.allclose(expected, base, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_energy_threshold_picks_the_smallest_rank() -> None:
    from peftkit.methods.lora.conversion import energy_rank

    singular_values = torch.tensor([3.0, 2.0, 1.0, 0.5])
    total = float((singular_values**2).sum())
    for threshold in (0.1, 9 / total, 9.5 / total, 13 / total, 0.999, 1.0):
        k = energy_rank(singular_values, threshold)
        held = float((singular_values[:k] ** 2).sum())
        assert held >= threshold * total - 1e-9 and (
            k == 1 or float((singular_values[: k - 1] ** 2).sum()) < threshold * total
        )


def test_save_as_lora_loads_in_both_libraries(tmp_path: Path) -> None:
    _, model = _reference_and_ours("lokr_mts", tmp_path)
    peftkit.save_as_lora(tmp_path / "converted", model, rank=3)
    outputs = [
        model_output(
            lib.PeftModel.from_pretrained(build_model("llama"), tmp_path / "converted").eval(), model_inputs("llama")
        )
        for lib in (peft, peftkit)
    ]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-4)
    assert peft.LoraConfig.from_pretrained(tmp_path / "converted").r == 3


def test_lora_to_lora_warns_and_other_adapter_converts() -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(r=8, init_lora_weights=False))
    model.add_adapter("other", peftkit.LoraConfig(r=8, target_modules=["v_proj"], init_lora_weights=False))
    with pytest.warns(UserWarning, match="already a LoRA adapter"):
        config, state = peftkit.convert_to_lora(model, rank=4, adapter_name="other")
    assert {k.rsplit(".", 2)[0] for k in state} == {n for n, _ in model.named_modules() if n.endswith(".v_proj")}
    assert config.r == config.lora_alpha == 4 and config.target_modules >= {"v_proj"}


def _lib_model(case: str, lib: ModuleType = peftkit) -> Any:
    kind, name, fields = {
        "dora": ("llama", "LoraConfig", {"target_modules": ["q_proj"], "use_dora": True}),
        "conv": ("convnet", "LoKrConfig", {"target_modules": ["conv", "lin"]}),
        "ia3": ("llama", "IA3Config", {"target_modules": ["q_proj"], "feedforward_modules": []}),
        "bias": ("llama", "LoraConfig", {"target_modules": ["q_proj"], "bias": "all"}),
        "embedding": ("llama", "LoraConfig", {"target_modules": ["embed_tokens"]}),
    }[case]
    return lib.get_peft_model(build_model(kind), getattr(lib, name)(**fields))


@pytest.mark.parametrize("case", ["dora", "conv", "ia3", "embedding"])
def test_unconvertible_layers_refused(case: str) -> None:
    model = _lib_model(case)
    assert not model.supports_lora_conversion()
    with pytest.raises(TypeError, match="do not support LoRA conversion"):
        peftkit.convert_to_lora(model, rank=2)


def test_support_agrees_with_reference_where_peft_is_right() -> None:
    for case in ("conv", "ia3", "embedding"):
        assert _lib_model(case).supports_lora_conversion() == _lib_model(case, peft).supports_lora_conversion()
    assert peftkit.get_peft_model(
        build_model("llama"), peftkit.LoHaConfig(target_modules=["q_proj"])
    ).supports_lora_conversion()


def test_bad_inputs_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(build_model("llama"), peftkit.LoKrConfig(target_modules=["q_proj"]))
    for rank in (0, -2, 1.5, -0.5, True, "8"):
        with pytest.raises((ConfigError, TypeError) if isinstance(rank, str) else ConfigError):
            peftkit.save_as_lora(tmp_path / "out", model, rank=rank)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="larger than the weight shape"):
        peftkit.save_as_lora(tmp_path / "out", model, rank=1000)
    with pytest.raises(ConfigError, match="bias"):
        peftkit.convert_to_lora(_lib_model("bias"), rank=2)
    with pytest.raises(TypeError, match="Could not detect any layer"):
        peftkit.convert_to_lora(model, rank=2, adapter_name="missing")
    prompt = peftkit.get_peft_model(
        build_model("llama"), peftkit.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    assert not prompt.supports_lora_conversion()
    with pytest.raises(TypeError, match="Could not detect any layer"):
        peftkit.convert_to_lora(prompt, rank=2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
