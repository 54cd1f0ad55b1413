"""``PeftMixedModel``: adapters of different methods (LoRA, LoHa, LoKr, AdaLoRA, OFT) on one model, active together.

PEFT's mixed models (``get_peft_model(model, config, mixed=True)``, ``PeftMixedModel.from_pretrained``). A module
adapted by several methods holds one adapter layer per method, each wrapping the previous one
(``LoKr(LoHa(LoRA(Linear)))``, in the order the adapters were added), so that with several adapters active

    y = W x + sum over active adapters a of delta_a(x)

each layer adding its own adapters' contribution through the template forward. OFT is multiplicative: its layer
rotates its input before the layers it wraps, ``y = inner(x R)``, so there the order of adding matters, as in
PEFT. Merging writes every layer's deltas into the one base weight, innermost layer first. As in PEFT 0.21, a
mixed model is for combining adapters that were trained and saved separately: it cannot save (save each adapter
from its own ``PeftModel``) and has no mixed batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, ConfigError, UnsupportedError
from peftkit.functional import MIXED_METHODS
from peftkit.layers.base import AdapterLayer
from peftkit.layers.walk import iter_adapter_modules
from peftkit.peft_model import PeftModel
from peftkit.tuner import TunerModel

#: Methods whose adapters a mixed model combines: PEFT's list less SHiRA, which peftkit lacks (BOFT is not mixable
#: in PEFT either).
MIXABLE_TYPES = ("LORA", "LOHA", "LOKR", "ADALORA", "OFT")


def check_mixable(config: PeftConfig) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``, as PEFT raises) unless ``config``'s method is one of
    :data:`MIXABLE_TYPES`."""
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if peft_type not in MIXABLE_TYPES:
        raise ConfigError(
            f"A {peft_type} adapter cannot join a mixed model in peftkit; mixable methods: {', '.join(MIXABLE_TYPES)}."
        )


class MixedModel(TunerModel):
    """The tuner model of a :class:`PeftMixedModel`: a :class:`TunerModel` whose adapters may be of different
    methods (their layers stack on a shared module)."""

    mixed_methods: ClassVar[bool] = True

    def check_new_config(self, adapter_name: str, config: PeftConfig) -> None:
        """Refuse a method that cannot be mixed (:func:`check_mixable`), before anything changes; let the new
        adapter's layers wrap other methods' layers (every injection and load passes here first)."""
        check_mixable(config)
        self.model.__dict__[MIXED_METHODS] = True


class PeftMixedModel(PeftModel):
    """A model with adapters of several methods, any of them active together (PEFT's ``PeftMixedModel``).

    Args:
        model: The base model (adapters are injected into it in place).
        peft_config: The first adapter's config (LoRA, LoHa, LoKr, AdaLoRA or OFT); ``None`` wraps without adapters.
        adapter_name: The first adapter's name.

    Raises:
        ConfigError: a method that cannot be mixed.
    """

    def __init__(self, model: nn.Module, peft_config: PeftConfig | None, adapter_name: str = "default") -> None:
        nn.Module.__init__(self)
        self.special_peft_forward_args = {"adapter_names"}
        if peft_config is not None:
            check_mixable(peft_config)
        self.base_model = MixedModel(model, peft_config, adapter_name)

    def _check_same_kind(self, config: PeftConfig) -> None:
        check_mixable(config)  # any mix of the mixable methods

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name`` (a name or a list, of any methods); each applies its own delta."""
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    def delete_adapter(self, adapter_name: str | list[str]) -> None:
        """Remove one adapter or a list of them: all, or (on an error) none.

        Raises:
            AdapterNameError: a name is unknown, or a named adapter is merged (unmerge it first); nothing is deleted.
        """
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._tuner.check_names(names)
        layers = (m for _, m in iter_adapter_modules(self.get_base_model()) if isinstance(m, AdapterLayer))
        merged = sorted({name for layer in layers for name in layer.merged_adapters if name in names})
        if merged:
            raise AdapterNameError(
                f"Adapter(s) {merged} are merged into the base weights; unmerge them before deleting (nothing was "
                "deleted)."
            )
        for name in names:
            super().delete_adapter(name)

    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The model with the active adapters of every method applied.

        Raises:
            UnsupportedError: ``adapter_names`` (mixed batches are not offered by mixed models, as in PEFT).
        """
        _refuse_batch_routing(adapter_names)
        return super().forward(*args, **kwargs)

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The base model's ``generate`` with the active adapters (no ``adapter_names``, as :meth:`forward`)."""
        _refuse_batch_routing(adapter_names)
        return super().generate(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Refused, as by PEFT 0.21: save each adapter from a :class:`~peftkit.PeftModel` of its own method.

        Raises:
            UnsupportedError: always; nothing is written.
        """
        raise UnsupportedError(
            "A PeftMixedModel cannot be saved (as in PEFT); save each adapter from a PeftModel of its own method "
            "and combine them with PeftMixedModel.from_pretrained(...) and load_adapter(...)."
        )


def _refuse_batch_routing(adapter_names: Sequence[str] | None) -> None:
    if adapter_names is not None:
        raise UnsupportedError("A PeftMixedModel has no mixed batches (adapter_names); use a PeftModel for those.")
