"""Prefix tuning's method spec: no layers, one prefix encoder per adapter."""

from __future__ import annotations

from peftkit.methods.prefix_tuning.config import PrefixTuningConfig
from peftkit.methods.prefix_tuning.encoder import PrefixEncoder
from peftkit.methods.spec import MethodSpec
from peftkit.types import PeftType

PREFIX_TUNING = MethodSpec(
    peft_type=PeftType.PREFIX_TUNING,
    config_class=PrefixTuningConfig,
    model_class_name="PrefixEncoder",
    prompt_encoder=PrefixEncoder,
)
