"""The on-disk vocabulary: method and task names as PEFT writes them in ``adapter_config.json``."""

from __future__ import annotations

import enum

from peftkit.catalog import METHOD_SPECS


class PeftType(str, enum.Enum):
    """Name of an adapter method, exactly as stored in the ``peft_type`` field.

    One member per entry of :data:`peftkit.catalog.METHOD_SPECS` (``PeftType.LORA == "LORA"``), so a new
    method gets its member from its catalog line. Inside peftkit, write ``PeftType("LORA")`` (a type checker
    cannot see members made in a loop) or, better, pass the method's spec.
    """

    _ignore_ = "_name"
    for _name in METHOD_SPECS:
        vars()[_name] = _name

    def __str__(self) -> str:
        return self.value


class TaskType(str, enum.Enum):
    """Name of a task, exactly as stored in the ``task_type`` field; it picks the ``PeftModelFor*`` class."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"

    def __str__(self) -> str:
        return self.value
