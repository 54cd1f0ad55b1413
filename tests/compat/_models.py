"""Tiny models (built from configs, nothing downloaded) and their inputs for the compatibility tests.

Every builder seeds torch first, so two calls give bit-identical base weights: one copy goes to the
library that creates an adapter, the other to the library that loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 64


class ConvNet(nn.Module):
    """A Conv2d followed by a Linear head: ``(batch, 3, 6, 6) -> (batch, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.lin = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.conv(x)).flatten(1))


def _llama() -> nn.Module:
    # Biases everywhere so that bias="all" / "lora_only" have something to train and save.
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        attention_bias=True,
        mlp_bias=True,
    )
    return LlamaForCausalLM(config)


def _gpt2() -> nn.Module:
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    return GPT2LMHeadModel(config)


def _bert_seq_cls() -> nn.Module:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "llama": _llama,
    "gpt2": _gpt2,
    "bert_seq_cls": _bert_seq_cls,
    "convnet": ConvNet,
}


def build_model(kind: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of ``kind`` in eval mode; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    return _BUILDERS[kind]().eval()


def model_inputs(kind: str, seed: int = 1) -> dict[str, Any]:
    """Keyword inputs for a forward of a ``kind`` model (batch of 2)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "convnet":
        return {"x": torch.randn(2, 3, 6, 6, generator=gen)}
    return {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=gen)}


def model_output(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The forward's main tensor (``logits`` for transformers models)."""
    with torch.no_grad():
        out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def randomise_adapter(model: nn.Module, seed: int = 2) -> None:
    """Perturb every adapter tensor and every trainable tensor, so that nothing is an identity.

    Covers LoRA A/B (and ``lora_B`` biases), DoRA magnitudes, modules_to_save copies and base biases
    trained by ``bias="all"`` / ``"lora_only"``, for all adapters (active or not).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad or ".lora_" in name or ".modules_to_save." in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
