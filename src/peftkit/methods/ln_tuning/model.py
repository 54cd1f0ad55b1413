"""``LNTuningModel``: PEFT's name for the tuner model that holds LN tuning adapters."""

from __future__ import annotations

from peftkit.tuner import TunerModel


class LNTuningModel(TunerModel):
    """The tuner model of LN tuning adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "ln_tuning_"
