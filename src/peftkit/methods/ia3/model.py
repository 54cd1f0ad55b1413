"""``IA3Model``: PEFT's name for the tuner model that holds IA3 adapters, with PEFT's ``add_weighted_adapter``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from peftkit.layers.walk import iter_adapter_modules
from peftkit.methods.combining import add_frozen, already_present, check_sources, union_of
from peftkit.methods.ia3.config import IA3Config
from peftkit.methods.ia3.layer import IA3Layer
from peftkit.tuner import TunerModel


class IA3Model(TunerModel):
    """The tuner model of IA3 adapters (``PeftModel.base_model``); all behaviour but :meth:`add_weighted_adapter`
    is :class:`TunerModel`'s."""

    prefix: str = "ia3_"

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str) -> None:
        """Add ``adapter_name`` with vectors ``l = sum_i w_i l_i`` in each layer (the sum over the adapters present
        there), targets and feed-forward modules the union of the adapters'; it is inactive and frozen. Nothing
        happens (with a warning) when ``adapter_name`` exists.

        Raises:
            AdapterNameError: an adapter does not exist. ConfigError: adapters mixing regex and list targets.
            UsageError: see :func:`~peftkit.methods.combining.check_sources`.
        """
        if already_present(self, adapter_name):
            return
        check_sources(self, adapters, weights)
        configs = [self.peft_config[name] for name in adapters]
        assert isinstance(configs[0], IA3Config)  # an IA3Model holds IA3 adapters only
        config = dataclasses.replace(
            configs[0],
            target_modules=union_of(configs, "target_modules"),
            feedforward_modules=union_of(configs, "feedforward_modules"),
        )
        add_frozen(self, adapter_name, config)
        with torch.no_grad():
            for _, layer in iter_adapter_modules(self.model):
                if isinstance(layer, IA3Layer) and adapter_name in layer.ia3_l:
                    combined = layer.ia3_l[adapter_name]
                    combined.zero_()
                    for name, weight in zip(adapters, weights, strict=True):
                        if name in layer.ia3_l:
                            combined.add_(layer.ia3_l[name] * weight)
