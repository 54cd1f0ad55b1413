"""PEFT's ``peft.helpers``: small user-facing utilities around adapters.

* :func:`check_if_peft_model` -- whether a directory or hub id holds a PEFT adapter (its config reads);
* :func:`rescale_adapter_scale` -- a context manager that multiplies every LoRA scaling ``s`` (``alpha / r``,
  or ``alpha / sqrt(r)`` with rsLoRA) by a factor, so that ``y = W x + (m s) B A x`` inside the block, and
  restores the exact previous scalings on exit (even when the block raises);
* :class:`MontecloraTrainerMixin` -- a ``transformers.Trainer`` mixin that adds MonteCLoRA's variational loss.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import ArgumentTypeError, TargetingError
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.model import LoraModel


def check_if_peft_model(model_name_or_path: str | os.PathLike) -> bool:
    """``True`` when ``model_name_or_path`` (a directory or a hub id) holds a readable ``adapter_config.json``;
    ``False`` for anything else (no such path or repo, no config, a broken one, no network)."""
    try:
        PeftConfig.from_pretrained(model_name_or_path)
    except Exception:  # any failure to read a config means "not an adapter", as in PEFT
        return False
    return True


@contextmanager
def rescale_adapter_scale(model: nn.Module, multiplier: float) -> Iterator[None]:
    """Multiply the scaling of every LoRA adapter in ``model`` by ``multiplier`` inside the block.

    Raises:
        ArgumentTypeError: ``multiplier`` is not an int or a float (a ``TypeError``).
        TargetingError: ``model`` has no LoRA layer (a ``ValueError``).
    """
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
        raise ArgumentTypeError(f"rescale_adapter_scale needs an int or float multiplier, got {type(multiplier)}.")
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if not layers:
        raise TargetingError("rescale_adapter_scale needs a model with LoRA layers; this one has none.")
    saved = [(layer, dict(layer.scaling)) for layer in layers]
    for layer, scaling in saved:
        for adapter, value in scaling.items():
            layer.scaling[adapter] = value * multiplier
    try:
        yield
    finally:
        for layer, scaling in saved:
            for adapter, value in scaling.items():
                layer.scaling[adapter] = value


class MontecloraTrainerMixin:
    """Put before a ``transformers.Trainer`` class (``class T(MontecloraTrainerMixin, Trainer)``): ``compute_loss``
    returns the task loss plus MonteCLoRA's variational loss, ``LoraModel._get_monteclora_loss()`` (averaged over
    the LoRA tuner models in the model when there are several; ``0`` without MonteCLoRA adapters)."""

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Trainer's loss (and outputs with ``return_outputs``) with the variational loss added."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)  # type: ignore[misc]  # a mixin: the Trainer is next in the MRO
        task_loss, outputs = result if return_outputs else (result, None)
        tuners = [module for module in model.modules() if isinstance(module, LoraModel)]
        extra: torch.Tensor | float = sum((tuner._get_monteclora_loss() for tuner in tuners), 0.0)
        total = task_loss + extra / max(len(tuners), 1)
        return (total, outputs) if return_outputs else total
