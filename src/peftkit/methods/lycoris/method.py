"""The spec pieces LoHa and LoKr share: per-layer facts, ``peftkit inspect``'s description, and the spec itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_lora_targets
from peftkit.methods.lora.method import LORA_CLI_OPTIONS
from peftkit.methods.lycoris.config import LycorisConfig
from peftkit.methods.lycoris.layer import LycorisLayer, LycorisLayerSpec
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.targeting import pattern_value
from peftkit.types import PeftType

#: A method's ``delta W`` formula: ``(factors by PEFT's names, scaling) -> delta W``.
DeltaFormula = Callable[[Mapping[str, torch.Tensor], float], torch.Tensor]


def lycoris_layer_facts(config: LycorisConfig, name: str, module: nn.Module) -> LycorisLayerSpec:
    """Rank and alpha after ``rank_pattern`` / ``alpha_pattern``, and the config's other per-layer settings.

    LoHa has no ``rank_dropout_scale`` field and always rescales its rank-dropout mask (PEFT's behaviour).
    """
    return LycorisLayerSpec(
        r=int(pattern_value(name, config.rank_pattern, config.r)),
        alpha=float(pattern_value(name, config.alpha_pattern, config.alpha)),
        rank_dropout=float(config.rank_dropout),
        module_dropout=float(config.module_dropout),
        init_weights=config.init_weights,
        use_effective_conv2d=config.use_effective_conv2d,
        rank_dropout_scale=bool(getattr(config, "rank_dropout_scale", True)),
        decompose_both=bool(getattr(config, "decompose_both", False)),
        decompose_factor=int(getattr(config, "decompose_factor", -1)),
    )


def delta_describer(
    formula: DeltaFormula,
) -> Callable[[str, Mapping[str, torch.Tensor], Mapping[str, Any]], tuple[int | None, float | None]]:
    """``peftkit inspect``'s hook for a LyCORIS method: ``(r, ||delta W||_F)`` from a module's saved factors,
    with ``r`` and ``alpha`` after the config's patterns (``None, None`` for a module without factors)."""

    def describe(
        module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
    ) -> tuple[int | None, float | None]:
        try:
            r = int(pattern_value(module, config.get("rank_pattern") or {}, config.get("r", 8)))
            alpha = float(pattern_value(module, config.get("alpha_pattern") or {}, config.get("alpha", 8)))
            delta = formula({name: t.float() for name, t in tensors.items()}, alpha / r)
        except (KeyError, RuntimeError):  # not this method's factors
            return None, None
        return r, float(delta.norm())

    return describe


def lycoris_spec(
    peft_type: str,
    config_class: type[LycorisConfig],
    tuner_class: type[nn.Module],
    prefix: str,
    layer: type[LycorisLayer],
    formula: DeltaFormula,
    extra_options: tuple[CliOption, ...] = (),
) -> MethodSpec:
    """The :class:`MethodSpec` of a LyCORIS method (LoHa, LoKr): Linear, Conv1d and Conv2d layers, LoRA's
    architecture defaults, the ``peftkit train`` options ``--r --alpha --rank-dropout --module-dropout
    --target-modules`` plus ``extra_options``."""
    return MethodSpec(
        peft_type=PeftType(peft_type),
        config_class=config_class,
        model_class_name=tuner_class.__name__,
        prefix=prefix,
        layer_table={nn.Linear: layer, nn.Conv1d: layer, nn.Conv2d: layer},
        layer_facts=lycoris_layer_facts,
        default_targets=default_lora_targets,
        linear_types=(nn.Linear, Conv1D),
        pattern_fields=("rank_pattern", "alpha_pattern"),
        tuner_class=tuner_class,
        public_names={config_class.__name__: config_class, tuner_class.__name__: tuner_class},
        cli_name=peft_type.lower(),
        cli_options=(
            CliOption("r", "r", int, "Rank", 8),
            CliOption("alpha", "alpha", float, "Scaling numerator, scaling = alpha / r", 16),
            CliOption("rank_dropout", "rank_dropout", float, "LoHa/LoKr: dropout of output rows of delta W"),
            CliOption("module_dropout", "module_dropout", float, "LoHa/LoKr: probability of skipping a layer"),
            *(option for option in LORA_CLI_OPTIONS if option.name == "target_modules"),
            *extra_options,
        ),
        cli_learning_rate=1e-3,
        describe_module=delta_describer(formula),
    )
