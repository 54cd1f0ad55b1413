"""PEFT's ``peft.tuners.lora.variants`` import path: the public names of the LoRA variants peftkit implements
(each variant's module is in :mod:`peftkit.methods.lora.variants`)."""

from __future__ import annotations

from peftkit.methods.lora.variant import LoraVariant
from peftkit.methods.lora.variants.alora import (
    ALoraLinearVariant,
    calculate_alora_offsets,
    get_alora_offsets_for_forward,
    get_alora_offsets_for_generate,
    is_alora_relevant_in_batch,
)

__all__ = [
    "ALoraLinearVariant",
    "LoraVariant",
    "calculate_alora_offsets",
    "get_alora_offsets_for_forward",
    "get_alora_offsets_for_generate",
    "is_alora_relevant_in_batch",
]
