"""AdaLoRA's method spec: layers, per-layer facts (rank from ``rank_pattern``), defaults, and the truncation
of saved tensors to the allocated ranks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_lora_targets
from peftkit.methods.adalora.allocator import pattern_key
from peftkit.methods.adalora.config import AdaLoraConfig
from peftkit.methods.adalora.layer import AdaLoraLayerSpec, SVDConv, SVDLinear
from peftkit.methods.adalora.model import AdaLoraModel
from peftkit.methods.lora.describe import describe_adalora_module
from peftkit.methods.lora.method import LORA_BIAS_MODES, LORA_CLI_OPTIONS, settle_lora_config
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

#: Architectures whose AdaLoRA default targets differ from LoRA's (PEFT adapts more layers there).
_ADALORA_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
}


def default_adalora_targets(model_type: str | None) -> list[str] | None:
    """AdaLoRA's default targets: LoRA's, except where :data:`_ADALORA_TARGETS` says otherwise."""
    if model_type in _ADALORA_TARGETS:
        return list(_ADALORA_TARGETS[model_type])
    return default_lora_targets(model_type)


def kept_ranks(rank_pattern: Mapping[str, Sequence[bool]] | None, module_name: str) -> Sequence[bool] | None:
    """The ``rank_pattern`` mask of ``module_name`` (keys with a trailing adapter name are accepted too)."""
    if not rank_pattern:
        return None
    key = pattern_key(module_name)
    if key in rank_pattern:
        return rank_pattern[key]
    return next((mask for k, mask in rank_pattern.items() if k.startswith(key + ".")), None)


def adalora_layer_facts(config: AdaLoraConfig, name: str, module: nn.Module) -> AdaLoraLayerSpec:
    """Rank ``init_r``, or the number of ranks ``rank_pattern`` keeps for ``name``; ``ranknum`` stays ``init_r``."""
    mask = kept_ranks(config.rank_pattern, name)
    return AdaLoraLayerSpec(
        r=config.init_r if mask is None else sum(bool(keep) for keep in mask),
        alpha=config.lora_alpha,
        dropout=float(config.lora_dropout),
        init=config.init_lora_weights,
        fan_in_fan_out=isinstance(module, Conv1D),
        ranknum=float(config.init_r),
    )


def truncate_to_rank_pattern(config: AdaLoraConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the allocated triplets in the on-disk tensors: rows of ``lora_A`` / ``lora_E`` and columns of
    ``lora_B`` marked ``True`` in ``rank_pattern``. Layers already at their allocated size are left as is."""
    if not config.rank_pattern:
        return state
    out = dict(state)
    for key, mask in config.rank_pattern.items():
        prefix = key.rsplit(".lora_E", 1)[0]
        E = out.get(f"{prefix}.lora_E")
        if E is None or E.shape[0] != len(mask) or all(mask):
            continue
        keep = torch.tensor([bool(k) for k in mask], device=E.device)
        out[f"{prefix}.lora_E"] = E[keep]
        out[f"{prefix}.lora_A"] = out[f"{prefix}.lora_A"][keep]
        out[f"{prefix}.lora_B"] = out[f"{prefix}.lora_B"][:, keep]
    return out


def adalora_cli_config(fields: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """``init_r = max(12, ceil(1.5 target_r))`` unless given, and the schedule's length ``total_step``."""
    fields = dict(fields)
    fields.setdefault("init_r", max(12, math.ceil(1.5 * fields.get("target_r", 8))))
    fields["total_step"] = total_steps
    return fields


def adalora_trainer_callbacks() -> list[Any]:
    """AdaLoRA's rank allocation after every optimiser step of a ``Trainer``."""
    from peftkit.methods.adalora.callback import AdaLoraCallback  # transformers' Trainer machinery, on demand

    return [AdaLoraCallback()]


ADALORA = MethodSpec(
    peft_type=PeftType("ADALORA"),
    config_class=AdaLoraConfig,
    model_class_name="AdaLoraModel",
    prefix="lora_",
    layer_table={nn.Linear: SVDLinear, Conv1D: SVDLinear, nn.Conv2d: SVDConv},
    layer_facts=adalora_layer_facts,
    default_targets=default_adalora_targets,
    linear_types=(nn.Linear, Conv1D),
    settle_config=settle_lora_config,
    finalize_state=truncate_to_rank_pattern,
    tuner_class=AdaLoraModel,
    bias_modes=LORA_BIAS_MODES,
    public_names={"AdaLoraConfig": AdaLoraConfig, "AdaLoraModel": AdaLoraModel},
    cli_name="adalora",
    cli_options=(
        CliOption("r", "target_r", int, "Target average rank (init_r = 1.5 r)"),
        *LORA_CLI_OPTIONS,
    ),
    cli_learning_rate=2e-4,
    cli_config=adalora_cli_config,
    trainer_callbacks=adalora_trainer_callbacks,
    describe_module=describe_adalora_module,
)
