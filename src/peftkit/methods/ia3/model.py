"""``IA3Model``: PEFT's name for the tuner model that holds IA3 adapters."""

from __future__ import annotations

from peftkit.tuner import TunerModel


class IA3Model(TunerModel):
    """The tuner model of IA3 adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "ia3_"
