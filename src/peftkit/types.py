"""The on-disk vocabulary: method and task names as PEFT writes them in ``adapter_config.json``."""

from __future__ import annotations

import enum


class PeftType(str, enum.Enum):
    """Name of an adapter method, exactly as stored in the ``peft_type`` field."""

    LORA = "LORA"
    IA3 = "IA3"
    ADALORA = "ADALORA"
    PROMPT_TUNING = "PROMPT_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    P_TUNING = "P_TUNING"

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
