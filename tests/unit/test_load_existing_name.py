"""``PeftModel.load_adapter`` into an adapter name the model already has: the weights are overwritten in
place (the same parameter objects, as the reference ``peft`` does), the adapter trains iff ``is_trainable``,
and a checkpoint that does not fit (shapes, config, merged adapter) is refused with the model unchanged.

Oracle: the reference ``peft`` loading the same directory into a fresh base gives the same outputs.
Covers every method family: LoRA (+ DoRA, + modules_to_save), IA3, AdaLoRA, prompt tuning.
"""

from __future__ import annotations

import peft as reference
import pytest
import torch
from tests.compat._models import build_model, model_inputs, model_output, randomise_adapter

import peftkit

CONFIGS = {
    "lora": ("LoraConfig", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "dora+modules_to_save": (
        "LoraConfig",
        {"r": 2, "target_modules": ["o_proj"], "use_dora": True, "modules_to_save": ["lm_head"]},
    ),
    "ia3": ("IA3Config", {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
    "adalora": ("AdaLoraConfig", {"init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj"]}),
    "prompt_tuning": ("PromptTuningConfig", {"num_virtual_tokens": 3, "task_type": "CAUSAL_LM"}),
}


def make(kind: str, seed: int, **overrides: object) -> peftkit.PeftModel:
    name, fields = CONFIGS[kind]
    model = peftkit.get_peft_model(build_model("llama"), getattr(peftkit, name)(**{**fields, **overrides}))
    randomise_adapter(model, seed=seed)
    return model


def adapter_params(model: peftkit.PeftModel) -> dict[str, torch.nn.Parameter]:
    """The adapter's trainable tensors (AdaLoRA's ``ranknum`` is a constant that never trains)."""
    return {n: p for n, p in model.named_parameters() if ".default." in n and ".ranknum." not in n}


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("is_trainable", [True, False])
def test_overwrites_in_place_like_peft(kind: str, is_trainable: bool, tmp_path) -> None:
    saved = make(kind, seed=2)
    saved.save_pretrained(tmp_path)
    inputs = model_inputs("llama")
    oracle = reference.PeftModel.from_pretrained(build_model("llama"), tmp_path).eval()
    expected = model_output(oracle, inputs)

    model = make(kind, seed=3)
    before = adapter_params(model)
    assert not torch.allclose(model_output(model.eval(), inputs), expected)
    model.train()
    model.load_adapter(tmp_path, "default", is_trainable=is_trainable)
    after = dict(model.named_parameters())
    assert all(after[n] is p for n, p in before.items()), "the adapter's parameters must be the same objects"
    assert all(p.requires_grad == is_trainable for p in before.values())
    assert model.peft_config["default"].inference_mode is (not is_trainable)
    assert model.training is is_trainable
    torch.testing.assert_close(model_output(model.eval(), inputs), expected, rtol=1e-5, atol=1e-5)


def state_of(model: peftkit.PeftModel) -> dict[str, tuple[torch.Tensor, bool]]:
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def assert_unchanged(model: peftkit.PeftModel, before: dict[str, tuple[torch.Tensor, bool]]) -> None:
    now = state_of(model)
    assert now.keys() == before.keys()
    for name, (tensor, grad) in before.items():
        assert torch.equal(now[name][0], tensor) and now[name][1] == grad, name


def test_mismatched_shapes_are_refused_naming_key_and_shapes(tmp_path) -> None:
    make("lora", seed=2, r=2).save_pretrained(tmp_path)
    model = make("lora", seed=3)
    before = state_of(model)
    with pytest.raises(
        peftkit.CheckpointError, match=r"q_proj\.lora_A\.weight: checkpoint \(2, 16\) vs model \(4, 16\)"
    ):
        model.load_adapter(tmp_path, "default")
    assert_unchanged(model, before)


def test_a_config_that_computes_differently_is_refused(tmp_path) -> None:
    make("lora", seed=2, lora_alpha=16).save_pretrained(tmp_path)
    model = make("lora", seed=3)
    before = state_of(model)
    with pytest.raises(peftkit.ConfigError, match=r"lora_alpha: loaded 16 vs existing 8"):
        model.load_adapter(tmp_path, "default")
    assert_unchanged(model, before)


def test_a_merged_adapter_is_refused(tmp_path) -> None:
    make("lora", seed=2).save_pretrained(tmp_path)
    model = make("lora", seed=3)
    model.merge_adapter()
    before = state_of(model)
    with pytest.raises(peftkit.AdapterNameError, match="unmerge"):
        model.load_adapter(tmp_path, "default")
    assert_unchanged(model, before)
