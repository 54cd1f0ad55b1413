"""PEFT's LoRA variants that peftkit implements, one module each, found by the ``LoraConfig`` field that switches
each on (see :mod:`peftkit.methods.lora.variant` for the hook they implement).

:data:`VARIANT_BUILDERS` maps a config field to ``"module:function"``; the function,
``build(config, module_name, module) -> LoraVariant | None``, is imported only when a config sets that field.
A new variant adds one line here, its name to ``LORA_VARIANTS`` of :mod:`peftkit.catalog`, and removes its field
from ``LoraConfig.unsupported_fields``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.methods.lora.variant import LoraVariant

#: ``LoraConfig`` field -> ``"module:function"`` building that variant's :class:`LoraVariant` for one layer.
VARIANT_BUILDERS: dict[str, str] = {
    "alora_invocation_tokens": "peftkit.methods.lora.variants.alora:build",
    "arrow_config": "peftkit.methods.lora.variants.arrow:build",
    "use_bdlora": "peftkit.methods.lora.variants.bdlora:build",
    "kasa_config": "peftkit.methods.lora.variants.kasa:build",
    "monteclora_config": "peftkit.methods.lora.variants.monteclora:build",
    "velora_config": "peftkit.methods.lora.variants.velora:build",
}

#: PEFT's public names of ``peft.tuners.lora.variants`` that peftkit has (``peftkit.tuners.lora.variants`` is this
#: module): name -> ``"module:attribute"``, imported on first use.
PEFT_NAMES: dict[str, str] = {
    "ALoraLinearVariant": "peftkit.methods.lora.variants.alora:ALoraLinearVariant",
    "calculate_alora_offsets": "peftkit.methods.lora.variants.alora:calculate_alora_offsets",
    "get_alora_offsets_for_forward": "peftkit.methods.lora.variants.alora:get_alora_offsets_for_forward",
    "get_alora_offsets_for_generate": "peftkit.methods.lora.variants.alora:get_alora_offsets_for_generate",
    "is_alora_relevant_in_batch": "peftkit.methods.lora.variants.alora:is_alora_relevant_in_batch",
    "BdLoraLinearVariant": "peftkit.methods.lora.variants.bdlora:BdLoraLinearVariant",
    "BlockDiagonalLinear": "peftkit.methods.lora.variants.block_diagonal:BlockDiagonalLinear",
    "KasaLinearVariant": "peftkit.methods.lora.variants.kasa:KasaLinearVariant",
    "MontecloraLinearVariant": "peftkit.methods.lora.variants.monteclora:MontecloraLinearVariant",
}

VariantBuilder = Callable[[Any, str, nn.Module], LoraVariant | None]


def _is_set(value: Any) -> bool:
    return value not in (None, False, {}, [], "")


def sets_variant(config: Any) -> bool:
    """Whether ``config`` switches on any LoRA variant (without it, :func:`build_variant` gives ``None`` for every
    layer)."""
    return any(_is_set(getattr(config, field_name, None)) for field_name in VARIANT_BUILDERS)


def build_variant(config: Any, module_name: str, module: nn.Module) -> LoraVariant | None:
    """The variant of layer ``module_name`` (``module`` its base layer) under ``config``, or ``None`` for plain
    LoRA.

    Raises:
        UnsupportedError: two variants are switched on together.
    """
    found: list[tuple[str, LoraVariant]] = []
    for field_name, location in VARIANT_BUILDERS.items():
        if not _is_set(getattr(config, field_name, None)):
            continue
        module_path, attr = location.split(":")
        builder: VariantBuilder = getattr(importlib.import_module(module_path), attr)
        variant = builder(config, module_name, module)
        if variant is not None:
            found.append((field_name, variant))
    if len(found) > 1:
        names = " and ".join(name for name, _ in found)
        raise UnsupportedError(f"LoraConfig sets {names}: these LoRA variants do not combine; choose one.")
    return found[0][1] if found else None


def __getattr__(name: str) -> Any:
    """PEFT's names of ``peft.tuners.lora.variants`` (:data:`PEFT_NAMES`), imported on first use."""
    if name not in PEFT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_path, attr = PEFT_NAMES[name].split(":")
    return getattr(importlib.import_module(module_path), attr)
