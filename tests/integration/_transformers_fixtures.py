"""Helpers and the opt-in fixture shared by the integration tests of the transformers integration (adapter
methods, Trainer, hub, hot-swap); their tiny models are in :mod:`tests._tiny` (re-exported here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from tests._tiny import BUILDERS, VOCAB, inputs_for, output_of, tiny_bert_cls, tiny_gpt2, tiny_llama, tiny_t5
from tests._tiny import integration_llama_config as llama_config
from torch import nn
from transformers import Trainer, TrainingArguments

import peftkit

__all__ = [
    "BUILDERS", "STYLES", "VOCAB", "TokenDataset", "adapter_weights", "inplace_model", "inputs_for", "llama_config",
    "lora", "losses", "output_of", "patched", "tiny_bert_cls", "tiny_gpt2", "tiny_llama", "tiny_t5", "trainer_args",
    "wrapped_model",
]  # fmt: skip


def lora(r: int = 4, alpha: float = 8, **kwargs: object) -> peftkit.LoraConfig:
    """A LoRA config with random (non-zero) A and B, so the adapter changes outputs."""
    return peftkit.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False, **kwargs)


# -- Trainer helpers --------------------------------------------------------------------------------
class TokenDataset(torch.utils.data.Dataset):
    """A few random token sequences, labels = inputs (causal LM)."""

    def __init__(self, n: int = 16, length: int = 8, seed: int = 0) -> None:
        self.ids = torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


def inplace_model(adapter_seed: int = 0, dropout: float = 0.1) -> nn.Module:
    """A tiny llama with a LoRA adapter added in place (initialised from ``adapter_seed``)."""
    model = peftkit.enable_adapter_methods(tiny_llama())
    torch.manual_seed(adapter_seed)
    model.add_adapter(lora(lora_dropout=dropout))
    return model


def wrapped_model(adapter_seed: int = 0, dropout: float = 0.1) -> nn.Module:
    """The same as :func:`inplace_model`, through ``get_peft_model``."""
    base = tiny_llama()
    torch.manual_seed(adapter_seed)
    return peftkit.get_peft_model(base, lora(lora_dropout=dropout, task_type=peftkit.TaskType.CAUSAL_LM))


STYLES: dict[str, Callable[..., nn.Module]] = {"inplace": inplace_model, "peft_model": wrapped_model}


def trainer_args(output_dir: object, **overrides: object) -> TrainingArguments:
    """Short CPU runs: batch 2, 8 steps, a checkpoint every 4, a loss logged every step."""
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=8,
        save_steps=4,
        logging_steps=1,
        learning_rate=1e-2,
        seed=42,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def losses(trainer: Trainer) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def adapter_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}


@pytest.fixture
def patched() -> Iterator[None]:
    """The documented opt-in, undone after the test."""
    peftkit.patch_transformers()
    try:
        yield
    finally:
        peftkit.unpatch_transformers()
