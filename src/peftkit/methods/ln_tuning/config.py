"""LN tuning configuration (Zhao et al., 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM
Finetuning", arXiv:2312.11420).

The field names and defaults are PEFT's, so that ``adapter_config.json`` files move between peftkit and PEFT
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, name_set
from peftkit.types import PeftType


@dataclass
class LNTuningConfig(PeftConfig):
    """Configuration of an LN tuning adapter: each target module ``f`` is replaced, while the adapter is active,
    by a trained copy ``f'`` of itself (same type, its own parameters): ``y = f'(x)``.

    Attributes:
        target_modules: Module names to tune (normally layer norms, any module type works): a list of names
            (matching a module whose full name equals a name or ends with ``.name``) or a regex string matched
            against the full name. ``None`` uses the per-architecture default (e.g. Llama's ``input_layernorm``,
            ``post_attention_layernorm``, ``norm``).
        exclude_modules: Names (or a regex) never adapted, with the same matching rules.
        modules_to_save: Modules trained in full and saved with the adapter (e.g. a classifier head).
    """

    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    modules_to_save: list[str] | str | None = None

    def __post_init__(self) -> None:
        self.peft_type = PeftType("LN_TUNING")
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        super().__post_init__()
        for name in ("target_modules", "exclude_modules"):
            check_regex("LNTuningConfig", name, getattr(self, name))
