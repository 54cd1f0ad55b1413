"""A quantized base with an adapter through the user-facing entry points: ``from_pretrained(adapter_dir,
quantization_config=..., device_map="auto")`` and transformers' ``Trainer`` (both model styles: peftkit's
adapter methods on the transformers model, and ``PeftModel``), with an evaluation between training steps."""

from __future__ import annotations

import json

import pytest
import torch
from tests.integration._transformers_fixtures import TokenDataset, losses, patched, trainer_args  # noqa: F401
from tests.quant._quant_models import KINDS, METHODS, load_quantized, logits, token_batch
from transformers import Trainer

import peftkit


@pytest.mark.parametrize("kind", ["nf4", "int8", "torchao-int8"])
@pytest.mark.parametrize(
    "entry", ["AutoPeftModelForCausalLM", "AutoModelForCausalLM", "PeftModel"], ids=["auto-peft", "auto", "peft-model"]
)
def test_from_pretrained_adapter_dir_with_quantization_config(tiny_dir, tmp_path, kind: str, entry: str) -> None:
    saved = peftkit.get_peft_model(load_quantized(tiny_dir, kind), METHODS["lora"]())
    saved.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_dir)
    ids = token_batch()
    quantization = KINDS[kind]()
    if entry == "PeftModel":
        base = load_quantized(tiny_dir, kind, device_map="auto")
        loaded = peftkit.PeftModel.from_pretrained(base, tmp_path)
    else:
        loaded = getattr(peftkit, entry).from_pretrained(tmp_path, quantization_config=quantization, device_map="auto")
    assert torch.equal(logits(loaded, ids), logits(saved, ids))


def inplace(tiny_dir, kind: str) -> torch.nn.Module:
    model = peftkit.enable_adapter_methods(peftkit.prepare_model_for_kbit_training(load_quantized(tiny_dir, kind)))
    model.add_adapter(METHODS["lora"]())
    return model


def wrapped(tiny_dir, kind: str) -> torch.nn.Module:
    model = peftkit.prepare_model_for_kbit_training(load_quantized(tiny_dir, kind))
    return peftkit.get_peft_model(model, METHODS["lora"]())


@pytest.mark.parametrize("style", [inplace, wrapped], ids=["inplace", "peft-model"])
@pytest.mark.parametrize("kind", ["nf4-bf16-dq", "int8", "torchao-int8"])
def test_trainer_trains_a_quantized_base_with_evaluations(patched, tiny_dir, tmp_path, style, kind: str) -> None:  # noqa: F811
    model = style(tiny_dir, kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = trainer_args(tmp_path, max_steps=6, save_steps=3, eval_strategy="steps", eval_steps=2)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), eval_dataset=TokenDataset(n=4, seed=1))
    trainer.train()
    assert len(losses(trainer)) == 6 and all(torch.isfinite(torch.tensor(v)) for v in losses(trainer).values())
    assert sum("eval_loss" in entry for entry in trainer.state.log_history) >= 3
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n].detach(), value) for n, value in before.items()), "every adapter tensor trains"
    checkpoint = tmp_path / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()


def test_trainer_refuses_a_quantization_that_cannot_train(patched, tiny_dir, tmp_path) -> None:  # noqa: F811
    model = peftkit.get_peft_model(load_quantized(tiny_dir, "torchao-intx4"), METHODS["lora"]())
    with pytest.raises(ValueError, match=r"do not support training|cannot be trained"):
        Trainer(model=model, args=trainer_args(tmp_path), train_dataset=TokenDataset())
