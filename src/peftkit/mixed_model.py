"""PEFT's ``peft.mixed_model`` import path. peftkit does not implement models that mix adapter types
(``PeftMixedModel``, ``get_peft_model(..., mixed=True)``): the class exists so that code which imports it, or
checks ``isinstance(model, (PeftModel, PeftMixedModel))`` as the transformers ``Trainer`` does, keeps working
(no peftkit model is a ``PeftMixedModel``); building one raises."""

from __future__ import annotations

from typing import Any

from torch import nn

from peftkit.errors import UnsupportedError

__all__ = ["PeftMixedModel"]


class PeftMixedModel(nn.Module):
    """Not implemented in peftkit: adapters of different types on one model.

    Raises:
        UnsupportedError: always, on construction (use ``PeftModel`` with adapters of one type).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnsupportedError(
            "peftkit does not implement PeftMixedModel (adapters of several types on one model); "
            "use PeftModel with adapters of one type."
        )
