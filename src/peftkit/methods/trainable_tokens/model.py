"""``TrainableTokensModel``: PEFT's name for the tuner model that holds trainable-tokens adapters."""

from __future__ import annotations

from peftkit.tuner import TunerModel


class TrainableTokensModel(TunerModel):
    """The tuner model of trainable-tokens adapters (``PeftModel.base_model``); all behaviour is
    :class:`TunerModel`'s."""

    prefix: str = "trainable_tokens_"
