"""The explicit list of adapter methods peftkit implements."""

from __future__ import annotations

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.methods.adalora.method import ADALORA
from peftkit.methods.ia3.method import IA3
from peftkit.methods.lora.method import LORA
from peftkit.methods.p_tuning.method import P_TUNING
from peftkit.methods.prefix_tuning.method import PREFIX_TUNING
from peftkit.methods.prompt_tuning.method import PROMPT_TUNING
from peftkit.methods.spec import MethodSpec
from peftkit.types import PeftType

METHODS: dict[PeftType, MethodSpec] = {
    spec.peft_type: spec for spec in (LORA, IA3, ADALORA, PROMPT_TUNING, PREFIX_TUNING, P_TUNING)
}


def method_for(peft_type: PeftType | str) -> MethodSpec:
    """The spec of ``peft_type`` (an enum or its string), with a clear error for unknown methods."""
    try:
        return METHODS[PeftType(peft_type)]
    except (ValueError, KeyError, TypeError):
        known = ", ".join(t.value for t in METHODS)
        raise ConfigError(f"peft_type={peft_type!r} is not implemented by peftkit; known methods: {known}.") from None


def method_of(config: PeftConfig) -> MethodSpec:
    """The spec of the method a config describes."""
    if config.peft_type is None:
        raise ConfigError(f"{type(config).__name__} has no peft_type.")
    return method_for(config.peft_type)


def config_class_for(peft_type: PeftType | str) -> type[PeftConfig]:
    """The config class for ``peft_type``."""
    return method_for(peft_type).config_class
