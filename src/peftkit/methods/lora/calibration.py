"""What the data-driven LoRA initialisations (CorDA, EVA) share before any adapter exists: which layers of a plain
model a ``LoraConfig`` would adapt, and where the model's weights live."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.targeting import in_selected_layers, name_matches


def linear_targets(model: nn.Module, config: Any, everything_if_unset: bool = False) -> Iterator[tuple[str, Any]]:
    """``(name, module)`` of the ``nn.Linear`` / GPT-2 ``Conv1D`` modules of ``model`` that ``config`` selects
    (``target_modules`` as names or a regex, ``exclude_modules``, ``layers_to_transform``), in model order; with
    ``everything_if_unset``, every such module when ``target_modules`` is ``None``. Typed ``Any``: the
    initialisations hang temporary attributes on them (``covariance_matrix``, ``eigens``...)."""
    targets = config.target_modules
    for name, module in model.named_modules():
        if not name or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if not (targets is None and everything_if_unset) and not name_matches(name, targets):
            continue
        if name_matches(name, config.exclude_modules):
            continue
        if in_selected_layers(name, config.layers_to_transform, config.layers_pattern):
            yield name, module


def model_device(model: nn.Module) -> torch.device | None:
    """The one device of ``model``'s non-meta parameters (``None`` if there are several or none)."""
    inner = getattr(model, "module", model)  # DataParallel / DeepSpeed wrappers
    devices = {p.device for p in inner.parameters() if p.device.type != "meta"}
    return devices.pop() if len(devices) == 1 else None
