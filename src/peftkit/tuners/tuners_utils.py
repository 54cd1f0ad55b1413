"""PEFT's ``peft.tuners.tuners_utils`` import path: the base classes every adapter layer and tuner model
derive from, and module targeting.

``BaseTunerLayer`` is :class:`~peftkit.layers.base.AdapterLayer` (every peftkit adapter layer is one, so PEFT's
check "did injection work?" -- ``any(isinstance(m, BaseTunerLayer) for m in model.modules())`` -- holds), and
``BaseTuner`` is :class:`~peftkit.tuner.TunerModel` (``PeftModel.base_model`` of every layer method).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from peftkit import adapter_state
from peftkit.config import PeftConfig
from peftkit.layers.base import AdapterLayer
from peftkit.targeting import in_selected_layers, name_matches
from peftkit.tuner import TunerModel

BaseTunerLayer = AdapterLayer
BaseTuner = TunerModel

__all__ = ["BaseTuner", "BaseTunerLayer", "check_target_module_exists", "set_requires_grad"]


def set_requires_grad(model: nn.Module, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
    """Let adapters ``adapter_names`` of ``model`` train, or stop them training, active or not."""
    adapter_state.set_requires_grad(model, adapter_names, requires_grad)


def _inside(key: str, module_name: str) -> bool:
    """Whether ``key`` is module ``module_name`` (a dotted suffix of a path) or lies inside it."""
    return f".{module_name}." in f".{key}."


def check_target_module_exists(config: PeftConfig, key: str) -> bool:
    """Whether module ``key`` (its full dotted name) is adapted under ``config``, as injection decides.

    It is when ``target_modules`` selects it (a regex matching the whole name, or a name equal to ``key`` or to
    its last dotted components), neither ``exclude_modules`` nor ``modules_to_save`` covers it, and it lies in
    ``layers_to_transform`` (the layer index read as the reference reads it: :func:`peftkit.targeting.layer_index`).
    Unlike the reference, a bare name equal to a target (no layer index in
    it) is not selected when ``layers_to_transform`` is set: peftkit's injection does not adapt it either.
    """
    if name_matches(key, getattr(config, "exclude_modules", None)):
        return False
    if any(_inside(key, name) for name in getattr(config, "modules_to_save", None) or ()):
        return False
    if not name_matches(key, getattr(config, "target_modules", None)):
        return False
    return in_selected_layers(
        key, getattr(config, "layers_to_transform", None), getattr(config, "layers_pattern", None)
    )
