"""IA3's method spec: which layers it wraps, its architecture defaults, and the per-layer facts."""

from __future__ import annotations

import copy
import re
from collections.abc import Collection

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_ia3_targets
from peftkit.errors import ConfigError
from peftkit.methods.ia3.config import IA3Config
from peftkit.methods.ia3.layer import Conv, IA3LayerSpec, Linear
from peftkit.methods.ia3.model import IA3Model
from peftkit.methods.lora.method import settle_lora_config
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType


def is_feedforward_module(name: str, feedforward: str | Collection[str] | None) -> bool:
    """PEFT's rule: a regex string must match the whole name; a collection matches by name suffix."""
    if feedforward is None:
        raise ConfigError("IA3Config.feedforward_modules is unset; pass a list of names (possibly []) or a regex.")
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, name) is not None
    return any(name.endswith(suffix) for suffix in feedforward)


def complete_ia3_config(config: IA3Config, model: nn.Module) -> IA3Config:
    """A copy of ``config`` with unset ``target_modules`` / ``feedforward_modules`` taken from the
    architecture's defaults, as PEFT fills them in (and saves them). ``config`` itself is not modified.

    Raises:
        ConfigError: ``feedforward_modules`` is unset and the architecture has no IA3 default.
    """
    if config.target_modules is not None and config.feedforward_modules is not None:
        return config
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    defaults = default_ia3_targets(model_type)
    if defaults is None:
        if config.target_modules is None:
            return config  # target resolution reports the missing target_modules with the model's module names
        raise ConfigError(
            f"IA3 has no default feedforward_modules for model type {model_type!r}; set feedforward_modules "
            "(the targets whose input is scaled; [] for none)."
        )
    completed = copy.copy(config)
    if completed.target_modules is None:
        completed.target_modules = set(defaults[0])
    if completed.feedforward_modules is None:
        completed.feedforward_modules = set(defaults[1])
    return completed


def ia3_layer_facts(config: IA3Config, name: str, module: nn.Module) -> IA3LayerSpec:
    """Feed-forward or attention placement for module ``name``; ``fan_in_fan_out`` forced on for Conv1D."""
    return IA3LayerSpec(
        is_feedforward=is_feedforward_module(name, config.feedforward_modules),
        fan_in_fan_out=isinstance(module, Conv1D),
        init=config.init_ia3_weights,
    )


def _default_targets(model_type: str | None) -> list[str] | None:
    defaults = default_ia3_targets(model_type)
    return None if defaults is None else defaults[0]


IA3 = MethodSpec(
    peft_type=PeftType("IA3"),
    config_class=IA3Config,
    model_class_name="IA3Model",
    prefix="ia3_",
    layer_table={
        nn.Linear: Linear,
        Conv1D: Linear,
        nn.Conv1d: Conv,
        nn.Conv2d: Conv,
        nn.Conv3d: Conv,
    },
    layer_facts=ia3_layer_facts,
    default_targets=_default_targets,
    linear_types=(nn.Linear, Conv1D),
    prepare_config=complete_ia3_config,
    settle_config=settle_lora_config,
    tuner_class=IA3Model,
    public_names={"IA3Config": IA3Config, "IA3Model": IA3Model},
    cli_name="ia3",
    cli_options=(
        CliOption("target_modules", "target_modules", str, "Modules to adapt: comma-separated names or a regex"),
        CliOption(
            "feedforward_modules", "feedforward_modules", str, "Modules whose input is scaled, as --target-modules"
        ),
    ),
    cli_learning_rate=3e-3,
)
