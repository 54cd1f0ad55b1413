"""PEFT's ``peft.utils.save_and_load`` import path: adapter state dicts and weight files
(defined in :mod:`peftkit.mapping` and :mod:`peftkit.io.load`)."""

from peftkit.io.base_state import get_base_model_state_dict, set_base_model_state_dict
from peftkit.io.load import load_peft_weights
from peftkit.mapping import get_peft_model_state_dict, set_peft_model_state_dict

__all__ = [
    "get_base_model_state_dict",
    "get_peft_model_state_dict",
    "load_peft_weights",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
]
