"""``--method`` names, the config class each one maps to, and which command-line option sets which field.

The config classes are looked up among peftkit's public names at run time, so a method becomes available
on the command line as soon as the library exports its config class.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import peftkit
from peftkit.cli.errors import CliError
from peftkit.config import PeftConfig

MethodName = Literal["lora", "ia3", "adalora", "prompt", "prefix", "ptuning"]

#: ``--method`` value -> name of the config class in ``peftkit``.
METHOD_CONFIGS: dict[str, str] = {
    "lora": "LoraConfig",
    "ia3": "IA3Config",
    "adalora": "AdaLoraConfig",
    "prompt": "PromptTuningConfig",
    "prefix": "PrefixTuningConfig",
    "ptuning": "PromptEncoderConfig",
}

#: Command-line option -> {method: config field it sets}. An option given for a method not listed is an error.
OPTION_FIELDS: dict[str, dict[str, str]] = {
    "r": {"lora": "r", "adalora": "target_r"},
    "alpha": {"lora": "lora_alpha", "adalora": "lora_alpha"},
    "dropout": {"lora": "lora_dropout", "adalora": "lora_dropout"},
    "target_modules": {"lora": "target_modules", "adalora": "target_modules", "ia3": "target_modules"},
    "feedforward_modules": {"ia3": "feedforward_modules"},
    "use_dora": {"lora": "use_dora"},
    "num_virtual_tokens": {m: "num_virtual_tokens" for m in ("prompt", "prefix", "ptuning")},
    "encoder_hidden_size": {"prefix": "encoder_hidden_size", "ptuning": "encoder_hidden_size"},
}

#: Values used when an option is not given (the config class's own default applies to everything else).
OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
    "adalora": {"lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
    "prompt": {"num_virtual_tokens": 20},
    "prefix": {"num_virtual_tokens": 20},
    "ptuning": {"num_virtual_tokens": 20, "encoder_hidden_size": 128},
}

#: Default learning rate per method (prompt methods train few parameters and need a larger step).
LEARNING_RATES: dict[str, float] = {
    "lora": 2e-4, "adalora": 2e-4, "ia3": 3e-3, "prompt": 3e-2, "prefix": 1e-2, "ptuning": 1e-2,
}  # fmt: skip


def config_class(method: str) -> type[PeftConfig]:
    """The peftkit config class for ``method``, with a clear error when this peftkit does not have it yet."""
    if method not in METHOD_CONFIGS:
        raise CliError(f"--method {method!r} is not known; use one of: {', '.join(METHOD_CONFIGS)}.")
    cls = getattr(peftkit, METHOD_CONFIGS[method], None)
    if cls is None:
        available = [m for m, name in METHOD_CONFIGS.items() if hasattr(peftkit, name)]
        raise CliError(
            f"--method {method}: peftkit.{METHOD_CONFIGS[method]} is not available in this version of peftkit "
            f"yet; available methods: {', '.join(available)}."
        )
    return cls


def parse_modules(value: str | None) -> list[str] | str | None:
    """``"q_proj,v_proj"`` -> a list of names; ``"all-linear"`` or a regex (``.*\\.(q|v)_proj``) stay a string."""
    if value is None or value == "all-linear":
        return value
    if re.fullmatch(r"[\w.\-]+(\s*,\s*[\w.\-]+)*", value.strip()) and not re.search(r"\.[*+?]", value):
        return [name.strip() for name in value.split(",")]
    try:
        re.compile(value)
    except re.error as exc:
        raise CliError(f"--target-modules {value!r} is neither a list of names nor a valid regex ({exc}).") from None
    return value


def method_fields(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Config fields from command-line ``options`` (``None``/``False`` = not given), checked against ``method``."""
    fields: dict[str, Any] = dict(OPTION_DEFAULTS.get(method, {}))
    for option, value in options.items():
        if value is None or value is False:
            continue
        targets = OPTION_FIELDS[option]
        if method not in targets:
            flag = "--" + option.replace("_", "-")
            raise CliError(f"{flag} does not apply to --method {method} (it applies to: {', '.join(targets)}).")
        if option in ("target_modules", "feedforward_modules"):
            value = parse_modules(value)
        elif isinstance(value, float) and value.is_integer() and option == "alpha":
            value = int(value)
        fields[targets[method]] = value
    return fields


def build_config(method: str, options: dict[str, Any], total_steps: int) -> PeftConfig:
    """The config for ``method`` from command-line ``options`` for a causal LM.

    Args:
        method: A ``--method`` value.
        options: Option name (as in :data:`OPTION_FIELDS`) -> value, ``None`` when not given.
        total_steps: Number of optimiser steps (AdaLoRA's schedule needs it as ``total_step``).
    """
    cls = config_class(method)
    fields = method_fields(method, options)
    if method == "adalora":
        target_r = fields.get("target_r", 8)
        fields.setdefault("init_r", max(12, math.ceil(1.5 * target_r)))
        fields["total_step"] = total_steps
    if method == "prefix" and "encoder_hidden_size" in fields:
        fields["prefix_projection"] = True  # the hidden size is that of the projection
    return cls(task_type="CAUSAL_LM", **fields)


def describe(config: PeftConfig) -> str:
    """A short human description such as ``LORA r=8 alpha=16 on all-linear``."""
    parts = [str(config.peft_type)]
    names = ("init_r", "target_r") if hasattr(config, "target_r") else ("r",)
    for name in (*names, "lora_alpha", "num_virtual_tokens"):
        if hasattr(config, name):
            parts.append(f"{name.replace('lora_', '')}={getattr(config, name)}")
    targets = getattr(config, "target_modules", None)
    if targets:
        parts.append("on " + (targets if isinstance(targets, str) else ",".join(sorted(targets))))
    return " ".join(parts)
