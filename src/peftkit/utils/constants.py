"""PEFT's constants (``peft.utils.constants`` / ``peft.utils.other``), built from peftkit's own tables.

The per-architecture default targets come from each registered method's ``default_targets``
(:class:`~peftkit.methods.spec.MethodSpec`), asked for every architecture of :data:`peftkit.defaults.DEFAULTS`,
so a method added to the catalog gets its ``TRANSFORMERS_MODELS_TO_<METHOD>_TARGET_MODULES_MAPPING`` here
(PEFT's name: the ``peft_type`` without underscores, ``LN_TUNING`` -> ``LNTUNING``).
"""

from __future__ import annotations

from peftkit.config import CONFIG_NAME
from peftkit.defaults import DEFAULTS
from peftkit.io.files import BIN_NAME, SAFETENSORS_NAME
from peftkit.methods.spec import EMBEDDING_LAYER_NAMES as _EMBEDDING_LAYERS
from peftkit.registry import METHODS
from peftkit.targeting import ALL_LINEAR
from peftkit.tuner import DUMMY_MODEL_CONFIG as _DUMMY_MODEL_CONFIG

SAFETENSORS_WEIGHTS_NAME = SAFETENSORS_NAME
WEIGHTS_NAME = BIN_NAME
INCLUDE_LINEAR_LAYERS_SHORTHAND = ALL_LINEAR
EMBEDDING_LAYER_NAMES = list(_EMBEDDING_LAYERS)

#: IA3's feed-forward modules (whose input is scaled) per architecture.
TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING: dict[str, list[str]] = {
    model_type: list(row.ia3_feedforward) for model_type, row in DEFAULTS.items() if row.has_ia3
}


def target_module_mappings() -> dict[str, dict[str, list[str]]]:
    """``"TRANSFORMERS_MODELS_TO_<METHOD>_TARGET_MODULES_MAPPING"`` -> ``{model_type: default targets}`` for
    every registered method that has per-architecture defaults."""
    mappings: dict[str, dict[str, list[str]]] = {}
    for peft_type, spec in METHODS.items():
        if spec.default_targets is None:
            continue
        table = {t: targets for t in DEFAULTS if (targets := spec.default_targets(t)) is not None}
        mappings[f"TRANSFORMERS_MODELS_TO_{peft_type.value.replace('_', '')}_TARGET_MODULES_MAPPING"] = table
    return mappings


#: A model without a ``config`` reads as this one (PEFT's constant; see ``TunerModel.get_model_config``).
DUMMY_MODEL_CONFIG = _DUMMY_MODEL_CONFIG
#: PEFT condenses a ``target_modules`` list of at least this many names to the fewest suffixes that select the same
#: modules (``tuners_utils._find_minimal_target_modules``); peftkit keeps the list as given (same modules adapted).
MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20

_MAPPINGS = target_module_mappings()
globals().update(_MAPPINGS)

__all__ = [
    "CONFIG_NAME",
    "DUMMY_MODEL_CONFIG",
    "EMBEDDING_LAYER_NAMES",
    "INCLUDE_LINEAR_LAYERS_SHORTHAND",
    "MIN_TARGET_MODULES_FOR_OPTIMIZATION",
    "SAFETENSORS_WEIGHTS_NAME",
    "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING",
    "WEIGHTS_NAME",
    *sorted(_MAPPINGS),
]
