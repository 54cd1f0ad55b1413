"""P-tuning's method spec: no layers, one prompt encoder per adapter."""

from __future__ import annotations

from peftkit.methods.p_tuning.config import PromptEncoderConfig, PromptEncoderReparameterizationType
from peftkit.methods.p_tuning.encoder import PromptEncoder
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

P_TUNING = MethodSpec(
    peft_type=PeftType("P_TUNING"),
    config_class=PromptEncoderConfig,
    model_class_name="PromptEncoder",
    prompt_encoder=PromptEncoder,
    public_names={
        "PromptEncoderConfig": PromptEncoderConfig,
        "PromptEncoderReparameterizationType": PromptEncoderReparameterizationType,
        "PromptEncoder": PromptEncoder,
    },
    cli_name="ptuning",
    cli_options=(
        CliOption("num_virtual_tokens", "num_virtual_tokens", int, "Number of virtual tokens", 20),
        CliOption("encoder_hidden_size", "encoder_hidden_size", int, "Hidden size of the prompt encoder", 128),
    ),
    cli_learning_rate=1e-2,
)
