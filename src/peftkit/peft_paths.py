"""PEFT's names at PEFT's paths where peftkit's layering defines them elsewhere.

PEFT's ``peft.peft_model`` holds the task classes (``PeftModelForCausalLM``...) and the status reports
(``get_layer_status``...); in peftkit those build on :mod:`peftkit.peft_model` (:mod:`peftkit.tasks`,
:mod:`peftkit.status`), so they are published there from above by :func:`publish` (``import peftkit`` runs
it) rather than imported from below. The method tables of ``peft.mapping`` are built here from the registry.
"""

from __future__ import annotations

from typing import Any

from peftkit import mapping, peft_model, status, tasks
from peftkit.config import PeftConfig
from peftkit.registry import METHODS
from peftkit.tuner import TunerModel
from peftkit.types import PeftType

#: ``peft_type`` -> config class, every registered method.
PEFT_TYPE_TO_CONFIG_MAPPING: dict[PeftType, type[PeftConfig]] = {t: s.config_class for t, s in METHODS.items()}
#: ``peft_type`` -> tuner model class, every registered layer method (prompt methods have no tuner model).
PEFT_TYPE_TO_TUNER_MAPPING: dict[PeftType, type[Any]] = {
    t: s.tuner_class or TunerModel for t, s in METHODS.items() if not s.is_prompt_learning
}
#: ``task_type`` string -> ``PeftModelFor*`` class.
MODEL_TYPE_TO_PEFT_MODEL_MAPPING: dict[str, type[peft_model.PeftModel]] = {
    task.value: cls for task, cls in peft_model.TASK_CLASSES.items()
}

_AT_PEFT_MODEL = {
    "PeftModelForCausalLM": tasks.PeftModelForCausalLM,
    "PeftModelForFeatureExtraction": tasks.PeftModelForFeatureExtraction,
    "PeftModelForQuestionAnswering": tasks.PeftModelForQuestionAnswering,
    "PeftModelForSeq2SeqLM": tasks.PeftModelForSeq2SeqLM,
    "PeftModelForSequenceClassification": tasks.PeftModelForSequenceClassification,
    "PeftModelForTokenClassification": tasks.PeftModelForTokenClassification,
    "TunerLayerStatus": status.TunerLayerStatus,
    "TunerModelStatus": status.TunerModelStatus,
    "get_layer_status": status.get_layer_status,
    "get_model_status": status.get_model_status,
}
_AT_MAPPING = {
    "PEFT_TYPE_TO_CONFIG_MAPPING": PEFT_TYPE_TO_CONFIG_MAPPING,
    "PEFT_TYPE_TO_TUNER_MAPPING": PEFT_TYPE_TO_TUNER_MAPPING,
}


def publish() -> None:
    """Put the names above into :mod:`peftkit.peft_model` and :mod:`peftkit.mapping` (idempotent)."""
    for name, obj in _AT_PEFT_MODEL.items():
        setattr(peft_model, name, obj)
    for name, obj in _AT_MAPPING.items():
        setattr(mapping, name, obj)
