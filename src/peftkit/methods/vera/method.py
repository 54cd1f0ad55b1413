"""VeRA's method spec: which layers it wraps, its shared projections, and the per-layer facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_lora_targets
from peftkit.methods.lora.method import LORA_CLI_OPTIONS, settle_lora_config
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.methods.vera.config import VeraConfig
from peftkit.methods.vera.layer import Linear, VeraLayerSpec
from peftkit.methods.vera.model import VeraModel
from peftkit.methods.vera.projections import VeraProjections
from peftkit.types import PeftType


def vera_layer_facts(config: VeraConfig, name: str, module: nn.Module) -> VeraLayerSpec:
    """The config's rank, dropout and initialisation; ``fan_in_fan_out`` forced on for ``Conv1D``."""
    return VeraLayerSpec(
        r=config.r,
        dropout=float(config.vera_dropout),
        d_initial=float(config.d_initial),
        init=config.init_weights,
        fan_in_fan_out=isinstance(module, Conv1D),
    )


def describe_vera_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(r, None)`` of a VeRA module for ``peftkit inspect``: the rank is the length of ``lambda_d`` (the weight
    change needs the projections, which a file may not hold)."""
    lambda_d = tensors.get("vera_lambda_d")
    return (None, None) if lambda_d is None else (int(lambda_d.numel()), None)


def default_vera_targets(model_type: str | None) -> list[str] | None:
    """LoRA's per-architecture targets, except Phi's (``q_proj``, ``v_proj``), as PEFT's VeRA table has it."""
    if model_type == "phi":
        return ["q_proj", "v_proj"]
    return default_lora_targets(model_type)


VERA = MethodSpec(
    peft_type=PeftType("VERA"),
    config_class=VeraConfig,
    model_class_name="VeraModel",
    prefix="vera_lambda_",
    layer_table={nn.Linear: Linear, Conv1D: Linear},
    layer_facts=vera_layer_facts,
    default_targets=default_vera_targets,
    linear_types=(nn.Linear, Conv1D),
    settle_config=settle_lora_config,
    tuner_class=VeraModel,
    bias_modes={"none": "none", "all": "all", "vera_only": "adapter_layers"},
    model_tensors=VeraProjections(),
    public_names={"VeraConfig": VeraConfig, "VeraModel": VeraModel},
    cli_name="vera",
    cli_options=(
        CliOption("r", "r", int, "Rank of the shared random projections", 256),
        CliOption("dropout", "vera_dropout", float, "Dropout on the adapter input", 0.0),
        CliOption("d_initial", "d_initial", float, "Initial value of the lambda_d vectors", 0.1),
        next(option for option in LORA_CLI_OPTIONS if option.name == "target_modules"),
    ),
    cli_learning_rate=4e-3,
    describe_module=describe_vera_module,
)
