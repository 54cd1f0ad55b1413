"""``PeftModel.prepare_model_for_gradient_checkpointing`` as in the reference: after it and reentrant activation
checkpointing, a backward pass reaches every LoRA weight of a frozen model with the reference's gradients (same
adapter weights, same inputs); a model loaded quantized is left alone (no hook is added)."""

from __future__ import annotations

import peft
import torch
from tests._tiny import build_model, model_inputs

import peftkit


def _lora_grads(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.prepare_model_for_gradient_checkpointing(model)
    model.activation_checkpointing_enable({"use_reentrant": True})
    model.train()
    model(**inputs).logits.square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def test_checkpointed_backward_reaches_the_adapters_as_in_reference() -> None:
    config = {"r": 4, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    ours = peftkit.get_peft_model(build_model("llama"), peftkit.LoraConfig(**config))
    theirs = peft.get_peft_model(build_model("llama"), peft.LoraConfig(**config))
    theirs.load_state_dict(ours.state_dict())
    inputs = model_inputs("llama")
    got, want = _lora_grads(ours, inputs), _lora_grads(theirs, inputs)
    assert got.keys() == want.keys() and len(got) == 8
    for name, grad in got.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, want[name], msg=name)


def test_quantized_model_is_left_alone() -> None:
    base = build_model("llama")
    base.is_loaded_in_8bit = True
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(target_modules=["q_proj"]))
    assert model.prepare_model_for_gradient_checkpointing(base) is base
    assert not base.get_input_embeddings()._forward_hooks
