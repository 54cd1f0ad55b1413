"""Trainer details for peftkit models: gradient checkpointing trains the adapter (same losses as without),
label names and dataset columns of a PeftModel come from the base model's forward, and a quantized base
with an adapter attached is accepted (a base without one is refused, as transformers does)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests._tiny import tiny_bert_cls, tiny_llama
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    STYLES,
    TokenDataset,
    adapter_weights,
    lora,
    losses,
    patched,
    trainer_args,
)
from transformers import Trainer

import peftkit


@pytest.mark.parametrize("style", sorted(STYLES))
def test_gradient_checkpointing_trains_the_adapter(patched, style: str, tmp_path) -> None:  # noqa: F811
    runs = {}
    for checkpointing in (False, True):
        model = STYLES[style](dropout=0.0)
        before = adapter_weights(model)
        trainer = Trainer(
            model=model,
            args=trainer_args(tmp_path / str(checkpointing), max_steps=3, gradient_checkpointing=checkpointing),
            train_dataset=TokenDataset(),
        )
        trainer.train()
        after = adapter_weights(model)
        assert all(not torch.equal(before[n], after[n]) for n in before), "every adapter tensor must train"
        runs[checkpointing] = losses(trainer), after
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-5)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value, atol=1e-5, rtol=1e-4)


class ClassificationDataset(torch.utils.data.Dataset):
    """BERT inputs with segment ids (``token_type_ids``), labels, and a text column the model does not take."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, object]:
        ids = torch.arange(3, 11) + i
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": (torch.arange(8) >= 4).long(),
            "labels": torch.tensor(i % 3),
            "text": f"sample {i}",
        }


def test_wrapper_label_names_and_columns_come_from_the_base_model(patched, tmp_path) -> None:  # noqa: F811
    config = lora(task_type=peftkit.TaskType.SEQ_CLS)
    model = peftkit.get_peft_model(tiny_bert_cls(), config)
    trainer = Trainer(
        model=model, args=trainer_args(tmp_path, max_steps=2, save_steps=10), train_dataset=ClassificationDataset()
    )
    assert trainer.label_names == ["labels"]
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    trainer.train()
    assert all(loss > 0 for loss in losses(trainer).values())


def fake_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """Mark a base model as quantized the way transformers' Trainer checks it (no quantization library here)."""
    config = SimpleNamespace(quant_method="fake")
    model.hf_quantizer = SimpleNamespace(is_trainable=True, is_qat_trainable=False, quantization_config=config)
    model.is_quantized = True
    return model


def test_quantized_base_with_adapter_is_accepted(patched, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="purely quantized"):
        Trainer(model=fake_quantized(tiny_llama()), args=trainer_args(tmp_path), train_dataset=TokenDataset())
    inplace = peftkit.enable_adapter_methods(fake_quantized(tiny_llama()))
    inplace.add_adapter(lora())
    wrapped = peftkit.get_peft_model(fake_quantized(tiny_llama()), lora(task_type=peftkit.TaskType.CAUSAL_LM))
    for model in (inplace, wrapped):
        trainer = Trainer(
            model=model, args=trainer_args(tmp_path, max_steps=1, save_steps=10), train_dataset=TokenDataset()
        )
        trainer.train()
        assert losses(trainer)
