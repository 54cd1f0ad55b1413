"""``LoraModel``: the tuner model of LoRA adapters (``PeftModel.base_model``), with PEFT's
``add_weighted_adapter`` (see :mod:`peftkit.methods.lora.weighted` for the math)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError, UnsupportedError
from peftkit.layers.walk import iter_adapter_modules
from peftkit.merging.strategies import SignMethod
from peftkit.methods.combining import add_frozen, already_present, check_sources, union_of
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.lora.init import is_weight_decomposing
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.variants.kasa import kasa_loss
from peftkit.methods.lora.variants.monteclora import monteclora_loss
from peftkit.methods.lora.weighted import SVD_TYPES, combine_layer, plan_combination
from peftkit.tuner import TunerModel


class LoraModel(TunerModel):
    """The tuner model of LoRA adapters; all behaviour but :meth:`add_weighted_adapter` is :class:`TunerModel`'s."""

    prefix: str = "lora_"

    def check_new_config(self, adapter_name: str, config: PeftConfig) -> None:
        """Adapters with ``target_parameters`` must all target the same parameters (as in PEFT): each parameter's
        wrapper nesting fixes the adapters' state-dict keys. KaSA adapters (which rewrite the base weights) and
        others do not share a model.

        Raises:
            ConfigError: ``config`` targets another set of parameters than an existing adapter, or one of
                ``config`` and an existing adapter uses KaSA and the other does not.
        """
        uses_kasa = getattr(config, "kasa_config", None) is not None
        for name, other in self.peft_config.items():
            if name != adapter_name and (getattr(other, "kasa_config", None) is not None) != uses_kasa:
                kasa, plain = (adapter_name, name) if uses_kasa else (name, adapter_name)
                raise ConfigError(
                    f"Adapter {kasa!r} uses KaSA, which rewrites the base weights, and {plain!r} does not; the two "
                    "cannot share a model. Use KaSA for every adapter or for none."
                )
        wanted = getattr(config, "target_parameters", None)
        for name, other in self.peft_config.items():
            theirs = getattr(other, "target_parameters", None)
            if wanted and theirs and set(theirs) != set(wanted):
                raise ConfigError(
                    f"Adapter {adapter_name!r} targets the parameters {sorted(wanted)} but adapter {name!r} targets "
                    f"{sorted(theirs)}; all adapters with target_parameters must target the same ones."
                )

    def _get_kasa_loss(self, adapter_names: str | Sequence[str] | None = None) -> torch.Tensor | float:
        """KaSA's auxiliary loss for ``adapter_names`` (default: the active adapters), to add to the task loss:
        the sum over KaSA layers of ``beta * sum(lora_diag ** 2) + gamma * (||B^T B - I||_F + ||A A^T - I||_F)``
        with each adapter's ``KasaConfig`` (:func:`~peftkit.methods.lora.variants.kasa.kasa_loss`); ``0.0`` when no
        such adapter has KaSA layers (PEFT's name)."""
        names = self.active_adapters if adapter_names is None else adapter_names
        names = [names] if isinstance(names, str) else list(names)
        configs = {name: getattr(c, "kasa_config", None) for name, c in self.peft_config.items()}
        return kasa_loss((layer for _, layer in iter_adapter_modules(self.model)), configs, names)

    def _get_monteclora_loss(self, adapter_names: str | Sequence[str] | None = None) -> torch.Tensor | float:
        """MonteCLoRA's variational loss for ``adapter_names`` (default: the active adapters), to add to the task
        loss: the mean over their samplers of ``KL + entropy``
        (:func:`~peftkit.methods.lora.variants.monteclora.monteclora_loss`), ``0.0`` in eval or without MonteCLoRA
        layers (PEFT's name)."""
        names = self.active_adapters if adapter_names is None else adapter_names
        names = [names] if isinstance(names, str) else list(names)
        return monteclora_loss((layer for _, layer in iter_adapter_modules(self.model)), names)

    def add_weighted_adapter(
        self,
        adapters: Sequence[str],
        weights: Sequence[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        svd_full_matrices: bool = True,
        svd_driver: str | None = None,
        density: float | None = None,
        majority_sign_method: SignMethod = "total",
    ) -> None:
        """Add ``adapter_name``: the combination of ``adapters`` with ``weights`` (negative weights subtract).

        The new adapter is inactive and frozen; its config is the first adapter's with ``r`` the new rank,
        ``lora_alpha = r`` (scaling 1: the sources' scalings are folded into its factors), the union of the
        targets, and no ``rank_pattern`` / ``alpha_pattern`` / ``use_rslora``. Nothing happens (with a warning)
        when ``adapter_name`` exists. Combination types, ranks and formulas: :mod:`peftkit.methods.lora.weighted`.

        Args:
            svd_rank: Rank of an ``*svd`` combination (default: the largest source rank).
            svd_clamp: Quantile in ``[0, 1]`` at which the SVD factors' entries are clamped (``None``: no clamp).
            svd_full_matrices, svd_driver: Passed to ``torch.linalg.svd`` (the driver only on CUDA).
            density: Fraction of entries kept by the pruning types (``ties``, ``dare_*``, ``magnitude_prune*``).
            majority_sign_method: TIES' sign election, ``"total"`` or ``"frequency"``.

        Raises:
            AdapterNameError: an adapter does not exist. ConfigError: see
            :func:`~peftkit.methods.lora.weighted.plan_combination`, or adapters mixing regex and list targets.
            UnsupportedError: an adapter targets parameters, is not LoRA, or rewrote the base weights (PiSSA/OLoRA).
            UsageError: see :func:`~peftkit.methods.combining.check_sources` and
            :func:`~peftkit.methods.lora.weighted.combine_layer`.
        """
        if already_present(self, adapter_name):
            return
        check_sources(self, adapters, weights)
        configs = [_combinable(name, self.peft_config[name]) for name in adapters]
        ranks = [max(c.r, *c.rank_pattern.values()) if c.rank_pattern else c.r for c in configs]
        how = plan_combination(
            combination_type, ranks, svd_rank, density=density, majority_sign_method=majority_sign_method,
            svd_clamp=svd_clamp, svd_full_matrices=svd_full_matrices, svd_driver=svd_driver,
        )  # fmt: skip
        if how.kind not in SVD_TYPES and any(c.use_bdlora is not None for c in configs):
            raise UnsupportedError(
                "add_weighted_adapter combines BD-LoRA adapters (use_bdlora) only with an '*svd' combination_type "
                "(the combined adapter is then a plain LoRA): block-diagonal factors cannot be concatenated or averaged"
            )
        fields: dict[str, Any] = {"r": how.rank, "lora_alpha": how.rank, "use_rslora": False, "rank_pattern": {}}
        fields["use_bdlora"] = None  # an SVD of the dense deltas: plain factors
        fields |= {"alpha_pattern": {}, "target_modules": union_of(configs, "target_modules")}
        config = dataclasses.replace(configs[0], **fields)
        add_frozen(self, adapter_name, config, init_weights=False)  # combine_layer writes every tensor
        try:
            for _, layer in iter_adapter_modules(self.model):
                if isinstance(layer, LoraLayer) and adapter_name in layer.scaling:
                    combine_layer(layer, adapter_name, adapters, weights, how)
        except BaseException:
            self.delete_adapter(adapter_name)
            raise


def _combinable(name: str, config: object) -> LoraConfig:
    """``config`` if adapter ``name`` can be combined, else :class:`UnsupportedError` saying why."""
    if not isinstance(config, LoraConfig):
        raise UnsupportedError(
            f"add_weighted_adapter combines LoRA adapters only; {name!r} is {type(config).__name__}."
        )
    if config.target_parameters:
        raise UnsupportedError(f"add_weighted_adapter cannot combine adapters that target parameters ({name!r} does).")
    if config.kasa_config is not None:
        raise UnsupportedError(
            f"Adapter {name!r} is a KaSA adapter: its lora_diag has no place in a combined LoRA adapter, and adding "
            "one would truncate the base weights again."
        )
    if is_weight_decomposing(config.init_lora_weights):
        raise UnsupportedError(
            f"Adapter {name!r} was initialised with {config.init_lora_weights!r}, which rewrites the base weights; "
            "a combined adapter would rewrite them again. Convert it to a plain LoRA first."
        )
    return config
