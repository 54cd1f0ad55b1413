"""Prompt tuning's method spec: no layers, one prompt encoder per adapter."""

from __future__ import annotations

from peftkit.methods.prompt_tuning.config import PromptTuningConfig, PromptTuningInit
from peftkit.methods.prompt_tuning.embedding import PromptEmbedding
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

PROMPT_TUNING = MethodSpec(
    peft_type=PeftType("PROMPT_TUNING"),
    config_class=PromptTuningConfig,
    model_class_name="PromptEmbedding",
    prompt_encoder=PromptEmbedding,
    public_names={
        "PromptTuningConfig": PromptTuningConfig,
        "PromptTuningInit": PromptTuningInit,
        "PromptEmbedding": PromptEmbedding,
    },
    cli_name="prompt",
    cli_options=(CliOption("num_virtual_tokens", "num_virtual_tokens", int, "Number of virtual tokens", 20),),
    cli_learning_rate=3e-2,
)
