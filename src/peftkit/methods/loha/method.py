"""LoHa's method spec and PEFT's ``LoHaModel`` name for its tuner model."""

from __future__ import annotations

from peftkit.methods.loha.config import LoHaConfig
from peftkit.methods.loha.layer import LoHaLayer, hadamard_delta
from peftkit.methods.lycoris.method import lycoris_spec
from peftkit.tuner import TunerModel


class LoHaModel(TunerModel):
    """The tuner model of LoHa adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "hada_"


LOHA = lycoris_spec("LOHA", LoHaConfig, LoHaModel, "hada_", LoHaLayer, hadamard_delta)
