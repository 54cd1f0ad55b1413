"""PEFT's ``peft.utils.other`` import path (nothing is defined here): k-bit training preparation
(:mod:`peftkit.quant.prepare`) and the FSDP wrap policy (:mod:`peftkit.integrations.fsdp`)."""

from peftkit.integrations.fsdp import fsdp_auto_wrap_policy
from peftkit.layers.placement import infer_device
from peftkit.quant.prepare import prepare_model_for_kbit_training

__all__ = ["fsdp_auto_wrap_policy", "infer_device", "prepare_model_for_kbit_training"]
