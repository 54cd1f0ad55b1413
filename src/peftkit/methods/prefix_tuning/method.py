"""Prefix tuning's method spec: no layers, one prefix encoder per adapter."""

from __future__ import annotations

from peftkit.methods.prefix_tuning.config import PrefixTuningConfig
from peftkit.methods.prefix_tuning.encoder import PrefixEncoder
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

PREFIX_TUNING = MethodSpec(
    peft_type=PeftType("PREFIX_TUNING"),
    config_class=PrefixTuningConfig,
    model_class_name="PrefixEncoder",
    prompt_encoder=PrefixEncoder,
    public_names={"PrefixTuningConfig": PrefixTuningConfig, "PrefixEncoder": PrefixEncoder},
    cli_name="prefix",
    cli_options=(
        CliOption("num_virtual_tokens", "num_virtual_tokens", int, "Number of virtual tokens", 20),
        CliOption("encoder_hidden_size", "encoder_hidden_size", int, "Hidden size of the prefix projection"),
    ),
    cli_learning_rate=1e-2,
)
