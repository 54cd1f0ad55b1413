"""``VeraModel``: PEFT's name for the tuner model that holds VeRA adapters."""

from __future__ import annotations

import torch

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.layers.shared import shared_tensors
from peftkit.tuner import TunerModel


class VeraModel(TunerModel):
    """The tuner model of VeRA adapters (``PeftModel.base_model``).

    All adapters of one model must draw their projections from the same ``projection_prng_key`` and agree on
    ``save_projection`` (PEFT's rule: the projections are one family per model).
    """

    prefix: str = "vera_lambda_"

    @property
    def vera_A(self) -> dict[str, torch.Tensor]:
        """Adapter name -> its shared projection ``A (r, max_in)`` (PEFT's ``base_model.vera_A``; read-only view)."""
        return self._projections("vera_A")

    @property
    def vera_B(self) -> dict[str, torch.Tensor]:
        """Adapter name -> its shared projection ``B (max_out, r)`` (PEFT's ``base_model.vera_B``)."""
        return self._projections("vera_B")

    def _projections(self, name: str) -> dict[str, torch.Tensor]:
        holder = shared_tensors(self.model)
        return {} if holder is None else {adapter: holder.get(adapter)[name] for adapter in holder.adapters}

    def check_new_config(self, adapter_name: str, config: PeftConfig) -> None:
        """Refuse a config whose ``projection_prng_key`` or ``save_projection`` differs from the adapters'.

        Raises:
            ConfigError: naming the field, both values, and what to do.
        """
        for name, existing in self.peft_config.items():
            for field in ("projection_prng_key", "save_projection"):
                new, old = getattr(config, field, None), getattr(existing, field, None)
                if new != old:
                    raise ConfigError(
                        f"VeraConfig.{field}={new!r} for adapter {adapter_name!r} differs from adapter {name!r} "
                        f"({old!r}); all VeRA adapters of a model must use the same {field}."
                    )
