"""P-tuning's method spec: no layers, one prompt encoder per adapter."""

from __future__ import annotations

from peftkit.methods.p_tuning.config import PromptEncoderConfig
from peftkit.methods.p_tuning.encoder import PromptEncoder
from peftkit.methods.spec import MethodSpec
from peftkit.types import PeftType

P_TUNING = MethodSpec(
    peft_type=PeftType.P_TUNING,
    config_class=PromptEncoderConfig,
    model_class_name="PromptEncoder",
    prompt_encoder=PromptEncoder,
)
