"""PEFT's ``peft.utils.save_and_load`` import path: adapter state dicts and weight files
(defined in :mod:`peftkit.mapping` and :mod:`peftkit.io.load`)."""

from peftkit.io.load import load_peft_weights
from peftkit.mapping import get_peft_model_state_dict, set_peft_model_state_dict

__all__ = ["get_peft_model_state_dict", "load_peft_weights", "set_peft_model_state_dict"]
