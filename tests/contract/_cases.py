"""The contract case table: a LoRA config crossed with a tiny model, built fresh and deterministically.

Every contract test takes the ``case`` fixture (``conftest.py``) and so runs once per row of :data:`CASES`.
A case builds the same base model every time (fixed seed), so "the base output" is simply a fresh base
model's output. Adapters start random (``init_lora_weights=False``; DoRA magnitudes and modules_to_save
copies perturbed) so that each adapter really changes the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tests._tiny import VOCAB, build_model
from torch import nn

import peftkit as peft


def token_ids(batch: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, 6), generator=torch.Generator().manual_seed(1))


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(1))


@dataclass
class Case:
    """One row of the table: which tiny model, its LoRA config, and an input batch.

    Attributes:
        name: Test id.
        kind: Model kind for ``tests.compat._models.build_model``.
        config_kwargs: LoraConfig arguments of the first adapter.
        make_input: ``batch -> input tensor``.
        second: Overrides for further adapters (``add``).
    """

    name: str
    kind: str
    config_kwargs: dict[str, Any]
    make_input: Callable[[int], torch.Tensor] = token_ids
    second: dict[str, Any] = field(default_factory=lambda: {"r": 2, "lora_alpha": 3})

    def base(self) -> nn.Module:
        """A fresh base model in eval mode, identical on every call."""
        return build_model(self.kind)

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
        """Add another random adapter with the case's ``second`` settings."""
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
    """The model's main output tensor (logits for transformers models), without autograd."""
    with torch.no_grad():
        out = model(x, **kwargs)
    return out.logits if hasattr(out, "logits") else out


def single_adapter_output(case: Case, config: peft.LoraConfig, state: dict, x: torch.Tensor) -> torch.Tensor:
    """Oracle for multi-adapter tests: a fresh base holding only this adapter, loaded from its state dict."""
    model = peft.get_peft_model(case.base(), config)
    peft.set_peft_model_state_dict(model, state)
    return output(model.eval(), x)


CASES = [
    Case("llama", "llama", {"task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8}),
    Case(
        "llama-all-linear-rslora",
        "llama",
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
    Case("gpt2", "gpt2", {"task_type": "CAUSAL_LM", "target_modules": ["c_attn", "c_proj"], "r": 4}),
    Case("bert-seq-cls", "bert_seq_cls", {"task_type": "SEQ_CLS", "r": 4, "lora_alpha": 4}),
    Case("conv2d", "convnet", {"target_modules": ["conv"], "modules_to_save": ["lin"], "r": 3}, images),
    Case(
        "llama-embedding",
        "llama",
        {"task_type": "CAUSAL_LM", "target_modules": ["embed_tokens", "q_proj"], "r": 4},
        second={"r": 2, "target_modules": ["embed_tokens", "v_proj"]},
    ),
    Case("llama-dora", "llama", {"task_type": "CAUSAL_LM", "r": 4, "use_dora": True}),
    Case(
        "llama-embedding-dora",
        "llama",
        {"task_type": "CAUSAL_LM", "target_modules": ["embed_tokens", "q_proj"], "r": 4, "use_dora": True},
    ),
    Case("conv2d-dora", "convnet", {"target_modules": ["conv", "lin"], "r": 3, "use_dora": True}, images),
]
