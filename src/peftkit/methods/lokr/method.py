"""LoKr's method spec and PEFT's ``LoKrModel`` name for its tuner model."""

from __future__ import annotations

from peftkit.methods.lokr.config import LoKrConfig
from peftkit.methods.lokr.layer import LoKrLayer, kronecker_delta
from peftkit.methods.lycoris.method import lycoris_spec
from peftkit.methods.spec import CliOption
from peftkit.tuner import TunerModel


class LoKrModel(TunerModel):
    """The tuner model of LoKr adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "lokr_"


LOKR = lycoris_spec(
    "LOKR",
    LoKrConfig,
    LoKrModel,
    "lokr_",
    LoKrLayer,
    kronecker_delta,
    extra_options=(
        CliOption("decompose_both", "decompose_both", bool, "LoKr: also factor the left Kronecker factor"),
        CliOption("decompose_factor", "decompose_factor", int, "LoKr: preferred first factor of each dimension"),
    ),
)
