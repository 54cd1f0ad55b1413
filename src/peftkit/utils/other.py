"""PEFT's ``peft.utils.other`` import path of :func:`prepare_model_for_kbit_training` (nothing defined here)."""

from peftkit.quant.prepare import prepare_model_for_kbit_training

__all__ = ["prepare_model_for_kbit_training"]
