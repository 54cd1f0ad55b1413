"""LN tuning's method spec: it wraps any module type (layer norms by default), one trained copy per adapter."""

from __future__ import annotations

from torch import nn

from peftkit.methods.ln_tuning.config import LNTuningConfig
from peftkit.methods.ln_tuning.layer import LNTuningLayer
from peftkit.methods.ln_tuning.model import LNTuningModel
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.types import PeftType

_DECODER = ["input_layernorm", "post_attention_layernorm", "norm"]
_GEMMA2 = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"]

#: ``model_type`` -> the modules LN tuning adapts by default (PEFT's table).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "gemma": _DECODER,
    "gemma2": [*_GEMMA2, "norm"],
    "gemma3_text": [*_GEMMA2, "norm"],
    "bloom": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "falcon": ["input_layernorm", "post_attention_layernorm", "ln_f"],
    "llava": ["multi_modal_projector", *_DECODER, "embed_tokens", "lm_head"],
    "t5": ["layer_norm", "final_layer_norm"],
    "mt5": ["layer_norm", "final_layer_norm"],
    "bart": ["self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"],
    "gpt2": ["ln_1", "ln_2", "ln_f"],
    "gptj": ["ln_1", "ln_f"],
    "blip-2": ["layernorm", "LayerNorm", "final_layer_norm", "self_attn_layer_norm"],
    "phi": ["input_layernorm", "final_layernorm"],
    "qwen2": ["post_attention_layernorm"],
    "qwen3": ["post_attention_layernorm"],
}


def default_ln_targets(model_type: str | None) -> list[str] | None:
    """The default targets of ``model_type`` (a copy), ``None`` for architectures the table does not know."""
    targets = DEFAULT_TARGETS.get(model_type or "")
    return None if targets is None else list(targets)


LN_TUNING = MethodSpec(
    peft_type=PeftType("LN_TUNING"),
    config_class=LNTuningConfig,
    model_class_name="LNTuningModel",
    prefix="ln_tuning_",
    layer_table={nn.Module: LNTuningLayer},
    layer_facts=lambda config, name, module: None,
    default_targets=default_ln_targets,
    tuner_class=LNTuningModel,
    public_names={"LNTuningConfig": LNTuningConfig, "LNTuningModel": LNTuningModel},
    cli_name="ln_tuning",
    cli_options=(
        CliOption(
            "target_modules",
            "target_modules",
            str,
            "Modules to adapt: comma-separated names or a regex",
        ),
    ),
    cli_learning_rate=1e-2,
)
