"""PEFT's ``peft.utils.loftq_utils`` import path: LoftQ (see :mod:`peftkit.methods.lora.loftq`)."""

from peftkit.methods.lora.loftq import loftq_init, replace_lora_weights_loftq

__all__ = ["loftq_init", "replace_lora_weights_loftq"]
