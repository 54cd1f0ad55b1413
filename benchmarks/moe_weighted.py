"""LoRA on fused expert parameters and combining adapters:

* **MoE expert LoRA train step**: forward + backward of a Mixtral whose fused expert parameters carry one LoRA
  per expert (``target_parameters``); floor: the same step of the bare model with only the expert parameters
  trainable (no adapter arithmetic);
* **add_weighted_adapter (svd)** of two rank-16 adapters (rank 2 in the tiny preset) on the attention
  projections (``combination_type="svd"``); floor: none (the SVDs dominate both).
"""

from __future__ import annotations

from typing import Any

import peft
import torch
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved

PRESETS = {  # (hidden, intermediate, experts, layers, sequence)
    "full": (256, 512, 8, 2, 128),
    "quick": (128, 256, 8, 2, 64),
    "tiny": (16, 8, 4, 1, 8),
}
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def moe_model(settings: Settings) -> nn.Module:
    hidden, inner, experts, layers, _ = PRESETS[settings.preset]
    config = MixtralConfig(
        vocab_size=512,
        hidden_size=hidden,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=experts,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    return MixtralForCausalLM(config).to(settings.device)


def step(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.detach()


def _adapted(lib: Any, settings: Settings, second: bool = False, **config: Any) -> nn.Module:
    """``lib``'s adapter (and a second one, ``"two"``) on a fresh model, both libraries' tensors set equal."""
    model = lib.get_peft_model(moe_model(settings), lib.LoraConfig(**config))
    if second:
        model.add_adapter("two", lib.LoraConfig(**config))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_" in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen).to(param.device))
    return model


def train_step_row(settings: Settings) -> Row:
    ids = torch.randint(0, 512, (2, PRESETS[settings.preset][4]), generator=torch.Generator().manual_seed(0))
    ids = ids.to(settings.device)
    lora = {"r": 8, "target_modules": [], "target_parameters": EXPERTS}
    kit, ref = _adapted(peftkit, settings, **lora).train(), _adapted(peft, settings, **lora).train()
    base = moe_model(settings).train()
    for name, param in base.named_parameters():
        param.requires_grad_(name.endswith(("gate_up_proj", "down_proj")))
    agree = close(step(kit, ids), step(ref, ids))
    cases = {PEFTKIT: Case(run=lambda: step(kit, ids)), PEFT: Case(run=lambda: step(ref, ids))}
    times = interleaved(settings, {**cases, FLOOR: Case(run=lambda: step(base, ids))})
    hidden, inner, experts, layers, seq = PRESETS[settings.preset]
    what = f"Mixtral {layers}x{hidden} ({experts} experts of {inner}), seq {seq}, batch 2; r=8 per expert"
    return times.row("MoE expert LoRA train step", agree, what)


def weighted_row(settings: Settings) -> Row:
    rank = 16 if PRESETS[settings.preset][0] >= 128 else 2
    lora = {"r": rank, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "init_lora_weights": False}
    models = {PEFTKIT: _adapted(peftkit, settings, True, **lora), PEFT: _adapted(peft, settings, True, **lora)}

    def combine(model: Any) -> None:
        model.add_weighted_adapter(["default", "two"], [0.6, 0.4], "mix", combination_type="svd")

    for model in models.values():
        combine(model)
    x = {k: m.base_model.model.model.layers[0].self_attn.q_proj.get_delta_weight("mix") for k, m in models.items()}
    agree = close(x[PEFTKIT], x[PEFT])
    cases = {
        lib: Case(run=lambda m=model: combine(m), prepare=lambda m=model: m.delete_adapter("mix"))
        for lib, model in models.items()
    }
    times = interleaved(settings, cases)
    return Row(
        "add_weighted_adapter (svd)",
        "ms",
        times[PEFTKIT],
        times[PEFT],
        None,
        None,
        agree,
        f"2 adapters r={rank} on q/k/v/o of the same Mixtral",
        samples={PEFTKIT: times.samples[PEFTKIT], PEFT: times.samples[PEFT]},
    )


def run(settings: Settings) -> list[Row]:
    return [train_step_row(settings), weighted_row(settings)]
