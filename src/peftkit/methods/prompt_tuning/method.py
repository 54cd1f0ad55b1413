"""Prompt tuning's method spec: no layers, one prompt encoder per adapter."""

from __future__ import annotations

from peftkit.methods.prompt_tuning.config import PromptTuningConfig
from peftkit.methods.prompt_tuning.embedding import PromptEmbedding
from peftkit.methods.spec import MethodSpec
from peftkit.types import PeftType

PROMPT_TUNING = MethodSpec(
    peft_type=PeftType.PROMPT_TUNING,
    config_class=PromptTuningConfig,
    model_class_name="PromptEmbedding",
    prompt_encoder=PromptEmbedding,
)
