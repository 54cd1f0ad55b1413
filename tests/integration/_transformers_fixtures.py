"""Tiny transformers models built from configs, and the opt-in fixture, shared by the integration tests of
the transformers integration (adapter methods, Trainer, hub, hot-swap)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
    TrainingArguments,
)

import peftkit

VOCAB = 64


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config())


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def tiny_bert_cls(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(config)


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert_cls, "t5": tiny_t5}


def lora(r: int = 4, alpha: float = 8, **kwargs: object) -> peftkit.LoraConfig:
    """A LoRA config with random (non-zero) A and B, so the adapter changes outputs."""
    return peftkit.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False, **kwargs)


def inputs_for(model: nn.Module, batch: int = 2, length: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4), generator=generator)
    return out


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits in eval mode (no dropout)."""
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


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
