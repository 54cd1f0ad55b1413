"""The contract case table: a LoRA config crossed with a tiny model, built fresh and deterministically.

Every contract test takes the ``case`` fixture and so runs once per row of :data:`CASES`. A case builds
the same base model every time (fixed seed), so "the base output" is simply a fresh base model's output.
Adapters start random (``init_lora_weights=False``; DoRA magnitudes and modules_to_save copies perturbed)
so that each adapter really changes the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
)

import peftkit as peft

VOCAB = 48


def tiny_llama() -> nn.Module:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32))


def tiny_bert() -> nn.Module:
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


class ConvNet(nn.Module):
    """A toy image classifier: two Conv2d layers and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def token_ids(batch: int = 4, length: int = 6) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def images(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@dataclass
class Case:
    """One row of the table: how to build the base model, its LoRA config and an input batch."""

    name: str
    build: Callable[[], nn.Module]
    config_kwargs: dict[str, Any]
    make_input: Callable[[int], torch.Tensor] = token_ids
    second: dict[str, Any] = field(default_factory=lambda: {"r": 2, "lora_alpha": 3})

    def base(self) -> nn.Module:
        """A fresh base model, identical on every call."""
        torch.manual_seed(0)
        return self.build().eval()

    def config(self, **overrides: Any) -> peft.LoraConfig:
        return peft.LoraConfig(**{"init_lora_weights": False, **self.config_kwargs, **overrides})

    def peft(self, adapter: str = "default", seed: int = 1, **overrides: Any) -> peft.PeftModel:
        """A fresh base model with one random adapter, in eval mode."""
        base = self.base()
        torch.manual_seed(seed)
        model = peft.get_peft_model(base, self.config(**overrides), adapter_name=adapter)
        perturb(model, adapter, seed)
        return model.eval()

    def add(self, model: peft.PeftModel, adapter: str, seed: int, **overrides: Any) -> None:
        """Add a second (third, ...) random adapter with the case's ``second`` settings."""
        torch.manual_seed(seed)
        model.add_adapter(adapter, self.config(**{**self.second, **overrides}))
        perturb(model, adapter, seed)

    def inputs(self, batch: int = 4) -> torch.Tensor:
        return self.make_input(batch)


def perturb(model: nn.Module, adapter: str, seed: int) -> None:
    """Move DoRA magnitudes and modules_to_save copies of ``adapter`` away from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{adapter}." not in name + ".":
                continue
            if "lora_magnitude_vector" in name or ".modules_to_save." in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))


def output(model: nn.Module, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The model's main output tensor (logits for transformers models)."""
    with torch.no_grad():
        out = model(x, **kwargs)
    return out.logits if hasattr(out, "logits") else out


CASES = [
    Case("llama", tiny_llama, {"task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8}),
    Case(
        "llama-all-linear-rslora",
        tiny_llama,
        {
            "task_type": "CAUSAL_LM",
            "target_modules": "all-linear",
            "r": 4,
            "lora_alpha": 6,
            "use_rslora": True,
            "rank_pattern": {"v_proj": 2},
            "alpha_pattern": {"o_proj": 3},
        },
    ),
    Case("gpt2", tiny_gpt2, {"task_type": "CAUSAL_LM", "target_modules": ["c_attn", "c_proj"], "r": 4}),
    Case("bert-seq-cls", tiny_bert, {"task_type": "SEQ_CLS", "r": 4, "lora_alpha": 4}),
    Case("conv2d", ConvNet, {"target_modules": ["conv1", "conv2"], "modules_to_save": ["head"], "r": 3}, images),
    Case(
        "llama-embedding",
        tiny_llama,
        {"task_type": "CAUSAL_LM", "target_modules": ["embed_tokens", "q_proj"], "r": 4},
        second={"r": 2, "target_modules": ["embed_tokens", "v_proj"]},
    ),
    Case("llama-dora", tiny_llama, {"task_type": "CAUSAL_LM", "r": 4, "use_dora": True}),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def llama_case() -> Case:
    return CASES[0]


def single_adapter_output(case: Case, config: peft.LoraConfig, state: dict, x: torch.Tensor) -> torch.Tensor:
    """Oracle for multi-adapter tests: a fresh base with only this adapter, loaded from its state dict."""
    model = peft.get_peft_model(case.base(), config)
    peft.set_peft_model_state_dict(model, state)
    return output(model.eval(), x)


@pytest.fixture
def helpers() -> Any:
    """Plain functions of this file, for test modules (conftest is not importable under importlib mode)."""

    class Helpers:
        output = staticmethod(output)
        perturb = staticmethod(perturb)
        single_adapter_output = staticmethod(single_adapter_output)

    return Helpers
