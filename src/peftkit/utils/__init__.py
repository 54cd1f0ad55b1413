"""PEFT's ``peft.utils`` import path: the public helpers users import from it (``import peftkit as peft`` keeps
``from peft.utils import get_peft_model_state_dict`` working). Nothing is defined here."""

from peftkit.errors import NoMatchingPeftModuleError, PeftError, PeftWarning
from peftkit.types import PeftType, TaskType
from peftkit.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap
from peftkit.utils.loftq_utils import replace_lora_weights_loftq
from peftkit.utils.other import *  # noqa: F403  # the constants and helpers of PEFT's utils.other
from peftkit.utils.other import __all__ as _other
from peftkit.utils.save_and_load import (
    get_base_model_state_dict,
    get_peft_model_state_dict,
    load_peft_weights,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)

__all__ = [
    "NoMatchingPeftModuleError",
    "PeftError",
    "PeftType",
    "PeftWarning",
    "TaskType",
    "get_base_model_state_dict",
    "get_peft_model_state_dict",
    "hotswap_adapter",
    "load_peft_weights",
    "prepare_model_for_compiled_hotswap",
    "replace_lora_weights_loftq",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    *_other,
]
