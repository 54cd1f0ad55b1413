"""PEFT's ``peft.utils.hotswap`` import path: LoRA hot-swapping (defined in :mod:`peftkit.hotswap`)."""

from peftkit.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

__all__ = ["hotswap_adapter", "prepare_model_for_compiled_hotswap"]
