"""What ``peftkit inspect`` reports about a LoRA (or AdaLoRA) module, from its saved tensors alone.

The weight change of a LoRA module is ``delta W = s * B A`` with ``s = alpha / r`` (``alpha / sqrt(r)`` with
rsLoRA, Kalajdzievski, 2023; ``rank_pattern`` / ``alpha_pattern`` honoured); its Frobenius norm
``||delta W||_F = s * ||B A||_F`` shows how much each layer was changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from peftkit.methods.lora.scaling import lora_scaling


def _pattern_value(module: str, pattern: Mapping[str, Any] | None, default: Any) -> Any:
    """The value of the first ``pattern`` key matching the end of ``module`` (PEFT's rule), else ``default``."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_factors(tensors: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(A (r, in...), B (out, r...))`` of a module's saved tensors (Linear/Conv or Embedding names)."""
    a = tensors.get("lora_A.weight", tensors.get("lora_embedding_A"))
    b = tensors.get("lora_B.weight", tensors.get("lora_embedding_B"))
    return a, b


def describe_lora_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(rank, ||delta W||_F)`` of a LoRA module (``None``, ``None`` when it has no LoRA factors).

    Args:
        module: Module path as in the file (patterns are matched against it).
        tensors: The module's tensors, keyed by their name after the module path (``"lora_A.weight"``).
        config: The adapter's ``adapter_config.json`` as a dict.
    """
    a, b = lora_factors(tensors)
    if a is None or b is None:
        return None, None
    rank = int(a.shape[0])
    alpha = _pattern_value(module, config.get("alpha_pattern"), config.get("lora_alpha", 8))
    scaling = lora_scaling(alpha, rank, bool(config.get("use_rslora")))
    return rank, scaling * float((b.float().flatten(1) @ a.float().flatten(1)).norm())


def describe_adalora_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(rank, None)`` of an AdaLoRA module: its rank is the number of non-zero singular values ``lora_E``."""
    if "lora_E" not in tensors:
        return None, None
    return int((tensors["lora_E"] != 0).sum()), None
