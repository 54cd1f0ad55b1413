"""PEFT's ``peft.utils`` import path for the public helpers users import from it (``import peftkit as peft``
keeps ``from peft.utils import prepare_model_for_kbit_training`` working). Nothing is defined here."""

from peftkit.layers.placement import infer_device
from peftkit.quant.prepare import prepare_model_for_kbit_training

__all__ = ["infer_device", "prepare_model_for_kbit_training"]
