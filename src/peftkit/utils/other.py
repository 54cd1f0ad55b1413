"""PEFT's ``peft.utils.other`` import path (nothing is defined here): k-bit training preparation and
mixed-precision casting (:mod:`peftkit.quant.prepare`), the FSDP wrap policy (:mod:`peftkit.integrations.fsdp`),
the ``modules_to_save`` and trainable-tokens wrappers and PEFT's constants (:mod:`peftkit.utils.constants`)."""

from peftkit.integrations.fsdp import fsdp_auto_wrap_policy
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.layers.placement import infer_device
from peftkit.layers.wrap import get_submodules as _get_submodules
from peftkit.methods.trainable_tokens.wrapper import TrainableTokensWrapper
from peftkit.quant.prepare import cast_mixed_precision_params, prepare_model_for_kbit_training
from peftkit.utils.constants import *  # noqa: F403  # PEFT's constants live at this path too
from peftkit.utils.constants import __all__ as _constants

__all__ = [
    "ModulesToSaveWrapper",
    "TrainableTokensWrapper",
    "_get_submodules",
    "cast_mixed_precision_params",
    "fsdp_auto_wrap_policy",
    "infer_device",
    "prepare_model_for_kbit_training",
    *_constants,
]
