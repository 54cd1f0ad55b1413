"""What a layer method tells the shared machinery about itself (one :class:`MethodSpec` per method)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import TargetingError
from peftkit.layers.base import AdapterLayer
from peftkit.types import PeftType


@dataclass(frozen=True)
class MethodSpec:
    """A method's facts: its config class, layer classes, key quirks and defaults.

    Attributes:
        peft_type: The method's name on disk.
        config_class: Its config dataclass.
        model_class_name: PEFT's name for the tuner model (``"LoraModel"``), used in reprs and errors.
        prefix: Prefix of every adapter parameter name (``"lora_"``); base params never contain it.
        layer_table: Base module type -> adapter layer class; looked up along the base type's MRO.
        layer_facts: ``(config, module_name, base_module) -> facts`` handed to ``layer.update_layer``.
        default_targets: ``model_type -> target names`` for configs without ``target_modules``.
        linear_types: Module types that ``"all-linear"`` selects.
        file_key_renames: In-memory key suffix (adapter name removed) -> on-disk suffix.
        settle_config: ``(config, model, target_names) -> None``: records in the stored config what
            injection decided (PEFT saves it, e.g. LoRA's ``fan_in_fan_out`` for GPT-2 ``Conv1D``).
        prepare_config: ``(config, model) -> config``: a completed copy of the config, before targeting
            (e.g. IA3 fills in its architecture's ``feedforward_modules``); must not modify its input.
        finalize_state: ``(config, state) -> state``: last edit of the on-disk tensors of an adapter (keys
            without the model prefix), e.g. AdaLoRA drops the ranks its ``rank_pattern`` pruned.
        tuner_class: Returns the method's ``TunerModel`` subclass (imported lazily: the tuner layer sits
            above the methods); ``None`` uses ``TunerModel``.
        after_inject: ``(config, model, adapter_name) -> None``: last step of an injection, once every layer
            has the adapter (e.g. LoRA ties the output head's factors to the input embedding's).
        pattern_fields: Config fields that are ``{regex: value}`` overrides per module (LoRA's ``rank_pattern``,
            ``alpha_pattern``); a key that matches no adapted module is warned about.
        prompt_encoder: For prompt methods (no layer table): the encoder class, built as
            ``prompt_encoder(config, word_embeddings, init_weights)``; ``None`` for layer methods.
    """

    peft_type: PeftType
    config_class: type[PeftConfig]
    model_class_name: str
    prefix: str = ""
    layer_table: dict[type, type[AdapterLayer]] = field(default_factory=dict)
    layer_facts: Callable[[Any, str, nn.Module], Any] | None = None
    default_targets: Callable[[str | None], list[str] | None] | None = None
    linear_types: tuple[type, ...] = ()
    file_key_renames: dict[str, str] = field(default_factory=dict)
    settle_config: Callable[[Any, nn.Module, Sequence[str]], None] | None = None
    prepare_config: Callable[[Any, nn.Module], Any] | None = None
    finalize_state: Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    tuner_class: Callable[[], type] | None = None
    prompt_encoder: type[nn.Module] | None = None
    pattern_fields: tuple[str, ...] = ()
    after_inject: Callable[[Any, nn.Module, str], None] | None = None

    @property
    def is_prompt_learning(self) -> bool:
        """``True`` for prompt methods: virtual tokens from a prompt encoder instead of adapter layers."""
        return self.prompt_encoder is not None

    @property
    def adaptable_types(self) -> tuple[type, ...]:
        return tuple(self.layer_table)

    def layer_class_for(self, module: nn.Module) -> type[AdapterLayer]:
        """The adapter layer class for ``module``, found along its type's MRO."""
        for cls in type(module).__mro__:
            if cls in self.layer_table:
                return self.layer_table[cls]
        kinds = ", ".join(sorted(t.__name__ for t in self.layer_table))
        raise TargetingError(f"{self.peft_type.value} cannot adapt a {type(module).__name__} (supported: {kinds}).")
