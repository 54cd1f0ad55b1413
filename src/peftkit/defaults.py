"""Per-architecture default target modules, keyed by transformers ``model_type``.

When a user builds a LoRA or IA3 config without naming ``target_modules``, the
library falls back to the entry for ``model.config.model_type`` in :data:`DEFAULTS`.
Each entry lists the *names* of the submodules to adapt (matched against the end of
a module's qualified name), so ``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``.

The table is plain data: one line per architecture, module names separated by spaces.
Architectures that are not listed have no default; callers must then ask the user to
pass ``target_modules`` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.errors import ConfigError

__all__ = [
    "DEFAULTS",
    "ArchitectureDefaults",
    "default_ia3_targets",
    "default_lora_targets",
    "defaults_for",
]


@dataclass(frozen=True)
class ArchitectureDefaults:
    """Default adapter placement for one model architecture.

    Attributes:
        lora_targets: Module names that LoRA wraps by default.
        ia3_targets: Module names that IA3 rescales by default; empty when the
            architecture has no IA3 default.
        ia3_feedforward: The subset of ``ia3_targets`` that sit in the feed-forward
            block, where IA3 scales the layer's input instead of its output.
    """

    lora_targets: tuple[str, ...]
    ia3_targets: tuple[str, ...] = ()
    ia3_feedforward: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check that the feed-forward modules are among the IA3 targets.

        Raises:
            ConfigError: If a feed-forward module is not listed in ``ia3_targets``.
        """
        stray = set(self.ia3_feedforward) - set(self.ia3_targets)
        if stray:
            raise ConfigError(f"IA3 feed-forward modules {sorted(stray)} are not IA3 targets")

    @property
    def has_ia3(self) -> bool:
        """Whether this architecture has an IA3 default at all."""
        return bool(self.ia3_targets)


def _row(lora: str, ia3: str = "", feedforward: str = "") -> ArchitectureDefaults:
    """Build one table row from space-separated module names.

    Args:
        lora: LoRA target module names, separated by spaces.
        ia3: IA3 target module names, separated by spaces.
        feedforward: IA3 feed-forward module names, separated by spaces.

    Returns:
        The corresponding :class:`ArchitectureDefaults`.
    """
    return ArchitectureDefaults(tuple(lora.split()), tuple(ia3.split()), tuple(feedforward.split()))


# Rows shared by several architectures.
_DECODER_QV = _row("q_proj v_proj", "q_proj v_proj down_proj", "down_proj")
_DECODER_KV = _row("q_proj v_proj", "k_proj v_proj down_proj", "down_proj")
_ENCODER_QV = _row("query value", "key value output.dense", "output.dense")
_FUSED_QKV = _row("query_key_value", "query_key_value dense_4h_to_h", "dense_4h_to_h")
_GPT2_STYLE = _row("c_attn", "c_attn mlp.c_proj", "mlp.c_proj")

#: The one table of per-architecture defaults, keyed by ``config.model_type``.
DEFAULTS: dict[str, ArchitectureDefaults] = {
    # Decoder-only language models.
    "llama": _DECODER_KV,
    "llama4": _DECODER_QV,
    "mistral": _DECODER_KV,
    "mixtral": _row("q_proj v_proj", "k_proj v_proj w2", "w2"),
    "qwen2": _DECODER_QV,
    "qwen3": _DECODER_QV,
    "gemma": _DECODER_QV,
    "gemma2": _DECODER_QV,
    "gemma3_text": _DECODER_QV,
    "phi": _row("q_proj v_proj fc1 fc2", "q_proj v_proj fc2", "fc2"),
    "gpt2": _GPT2_STYLE,
    "gpt_bigcode": _GPT2_STYLE,
    "gpt_neo": _row("q_proj v_proj", "q_proj v_proj c_proj", "c_proj"),
    "gpt_neox": _FUSED_QKV,
    "gptj": _row("q_proj v_proj", "q_proj v_proj fc_out", "fc_out"),
    "opt": _row("q_proj v_proj", "q_proj k_proj fc2", "fc2"),
    "bloom": _row("query_key_value", "query_key_value mlp.dense_4h_to_h", "mlp.dense_4h_to_h"),
    "falcon": _FUSED_QKV,
    "RefinedWeb": _FUSED_QKV,
    "RefinedWebModel": _FUSED_QKV,
    "stablelm": _row("q_proj v_proj"),
    "mpt": _row("Wqkv"),
    "codegen": _row("qkv_proj"),
    "chatglm": _row("query_key_value"),
    "btlm": _row("c_proj c_attn"),
    "nemotron_h": _row("q_proj k_proj v_proj o_proj"),
    "rwkv": _row("key value receptance output"),
    "rwkv7": _row("r_proj k_proj v_proj o_proj key value"),
    # Encoder-only models.
    "bert": _ENCODER_QV,
    "roberta": _ENCODER_QV,
    "xlm-roberta": _row("query value"),
    "electra": _row("query value"),
    "layoutlm": _row("query value"),
    "deberta": _row("in_proj", "in_proj output.dense", "output.dense"),
    "deberta-v2": _row("query_proj value_proj", "key_proj value_proj output.dense", "output.dense"),
    # Encoder-decoder and multimodal models.
    "t5": _row("q v", "k v wo", "wo"),
    "mt5": _row("q v", "k v wi_1"),
    # Not in the reference's table; peftkit's own defaults for architectures users ask for.
    "phi3": _row("qkv_proj", "qkv_proj down_proj", "down_proj"),
    "whisper": _row("q_proj v_proj", "k_proj v_proj fc2", "fc2"),
    "mbart": _row("q_proj v_proj", "q_proj v_proj fc2", "fc2"),
    "m2m_100": _row("q_proj v_proj", "q_proj v_proj fc2", "fc2"),
    "starcoder2": _row("q_proj v_proj", "q_proj v_proj c_proj", "c_proj"),
    "distilbert": _row("q_lin v_lin", "k_lin v_lin lin2", "lin2"),
    "vit": _row("q_proj v_proj", "k_proj v_proj fc2", "fc2"),
    "bart": _row("q_proj v_proj", "q_proj v_proj fc2", "fc2"),
    "blip-2": _row("q v q_proj v_proj"),
}


def defaults_for(model_type: str | None) -> ArchitectureDefaults | None:
    """Look up the defaults row for an architecture.

    Args:
        model_type: The transformers ``config.model_type`` string, or ``None``.

    Returns:
        The row from :data:`DEFAULTS`, or ``None`` when the architecture is unknown.
    """
    if model_type is None:
        return None
    return DEFAULTS.get(model_type)


def default_lora_targets(model_type: str | None) -> list[str] | None:
    """Return the default LoRA target module names for an architecture.

    Args:
        model_type: The transformers ``config.model_type`` string, or ``None``.

    Returns:
        A fresh list of module names, or ``None`` when the architecture is unknown.
    """
    row = defaults_for(model_type)
    return None if row is None else list(row.lora_targets)


def default_ia3_targets(model_type: str | None) -> tuple[list[str], list[str]] | None:
    """Return the default IA3 target and feed-forward module names for an architecture.

    Args:
        model_type: The transformers ``config.model_type`` string, or ``None``.

    Returns:
        A ``(targets, feedforward)`` pair of fresh lists, or ``None`` when the
        architecture is unknown or has no IA3 default.
    """
    row = defaults_for(model_type)
    if row is None or not row.has_ia3:
        return None
    return list(row.ia3_targets), list(row.ia3_feedforward)
