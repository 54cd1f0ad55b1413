"""Models, adapter configs and adapters shared by the benchmarks: one base, identical weights in both libraries.

Shapes:

* ``SMALL``: a small Llama (4 layers, hidden 512, MLP 1376, 8 heads, the Llama vocabulary of 32000).
* ``LARGE``: TinyLlama-1.1B's shape (22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads): 1.1B parameters,
  4.4 GB in float32. It is built once per process (on the meta device, then filled without transformers'
  slow random init) and reused by every variant.
* ``TINY``: for the harness test only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import peft
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import peftkit


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped model."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    def config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )

    def describe(self) -> str:
        return (
            f"Llama {self.layers} layers, hidden {self.hidden}, MLP {self.intermediate}, "
            f"{self.heads}/{self.kv_heads} heads, vocab {self.vocab}"
        )


SMALL = Shape(layers=4, hidden=512, intermediate=1376, heads=8, kv_heads=8, vocab=32000)
LARGE = Shape(layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000)
TINY = Shape(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=128)


def build_model(shape: Shape, seed: int = 0, device: str = "cpu") -> LlamaForCausalLM:
    """A randomly initialised model (transformers' own init), in eval mode."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(shape.config()).to(device)
    return model.eval()


def build_model_fast(shape: Shape, seed: int = 0, device: str = "cpu") -> LlamaForCausalLM:
    """A large model built on the meta device and filled by tiling one block of small uniform values (much
    faster than transformers' init; the values only need to be finite); ``device="meta"`` stays unmaterialised."""
    with torch.device("meta"):
        model = LlamaForCausalLM(shape.config())
    if device == "meta":
        return model.eval()
    model = model.to_empty(device=device)
    pool = torch.empty(1 << 20, device=device).uniform_(
        -0.02, 0.02, generator=torch.Generator(device).manual_seed(seed)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            flat = param.view(-1)
            for start in range(0, flat.numel(), pool.numel()):
                chunk = flat[start : start + pool.numel()]
                chunk.copy_(pool[: chunk.numel()])
        rotary = model.model.rotary_emb
        inv_freq, _ = rotary.compute_default_rope_parameters(rotary.config)
        rotary.inv_freq.copy_(inv_freq)
        rotary.original_inv_freq.copy_(inv_freq)
    return model.eval()


@dataclass(frozen=True)
class StackShape:
    """A stack of ``layers`` square ``nn.Linear(width, width)`` run on ``tokens`` rows (the per-method benchmarks)."""

    width: int
    layers: int
    tokens: int


def linear_stack(shape: StackShape, device: str = "cpu", seed: int = 0) -> nn.Sequential:
    """The stack of ``shape``, seeded, on ``device``."""
    torch.manual_seed(seed)
    return nn.Sequential(*(nn.Linear(shape.width, shape.width) for _ in range(shape.layers))).to(device)


def lora_kwargs(r: int = 16, dropout: float = 0.0, **extra: Any) -> dict[str, Any]:
    """The benchmark's LoRA config: r=16, alpha=32, all linear layers (not the LM head)."""
    return {"r": r, "lora_alpha": 2 * r, "lora_dropout": dropout, "target_modules": "all-linear", **extra}


def peft_config(**kwargs: Any) -> peft.LoraConfig:
    return peft.LoraConfig(task_type="CAUSAL_LM", **kwargs)


def kit_config(**kwargs: Any) -> peftkit.LoraConfig:
    return peftkit.LoraConfig(task_type="CAUSAL_LM", **kwargs)


def randomize_lora(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Give every LoRA factor fresh random values so that the adapter changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def copy_lora(src: nn.Module, dst: nn.Module) -> None:
    """Copy every LoRA tensor of ``src`` into ``dst`` by (identical) parameter name."""
    a, b = lora_parameters(src), lora_parameters(dst)
    if set(a) != set(b):
        raise AssertionError(f"LoRA parameter names differ: {sorted(set(a) ^ set(b))[:6]}")
    with torch.no_grad():
        for name, param in a.items():
            b[name].copy_(param)


def adapter_pair(base: nn.Module, seed: int = 1, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """``(peftkit_model, peft_model)`` on deep copies of ``base`` with the same random adapter ``default``."""
    ref = peft.get_peft_model(copy.deepcopy(base), peft_config(**kwargs))
    kit = peftkit.get_peft_model(copy.deepcopy(base), kit_config(**kwargs))
    randomize_lora(ref, seed)
    copy_lora(ref, kit)
    return kit, ref


def add_adapters(kit: Any, ref: Any, names: list[str], seed: int = 100, **kwargs: Any) -> None:
    """Add adapters ``names`` to both models, with the same random weights in each."""
    for i, name in enumerate(names):
        ref.add_adapter(name, peft_config(**kwargs))
        kit.add_adapter(name, kit_config(**kwargs))
        gen = torch.Generator().manual_seed(seed + i)
        ref_params, kit_params = lora_parameters(ref), lora_parameters(kit)
        with torch.no_grad():
            for key, param in ref_params.items():
                if f".{name}." in key:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                    kit_params[key].copy_(param)


def shrink(shape: Shape, **changes: int) -> Shape:
    return replace(shape, **changes)
