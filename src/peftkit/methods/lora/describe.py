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
    experts = _experts(module, a, config)
    rank = int(a.shape[0]) // experts
    alpha = _pattern_value(module, config.get("alpha_pattern"), config.get("lora_alpha", 8))
    scaling = lora_scaling(alpha, rank, bool(config.get("use_rslora")))
    if experts > 1:  # one LoRA per expert: A (E r, in) row blocks, B (out, r E) interleaved columns
        per_a = a.float().reshape(experts, rank, -1)
        per_b = b.float().reshape(b.shape[0], rank, experts).permute(2, 0, 1)
        return rank, scaling * float(torch.bmm(per_b, per_a).norm())
    return rank, scaling * float((b.float().flatten(1) @ a.float().flatten(1)).norm())


def _experts(module: str, a: torch.Tensor, config: Mapping[str, Any]) -> int:
    """How many experts share the factors of ``module``: ``rows of A / r`` for a module whose parameter is in
    ``target_parameters`` (the wrappers of one module are ``name``, ``name.base_layer``, ...), else 1."""
    owner = module.replace(".base_layer", "")
    holders = {t.rpartition(".")[0] for t in config.get("target_parameters") or ()}
    rows, rank = int(a.shape[0]), int(config.get("r", 8))
    named = any(h and (owner == h or owner.endswith("." + h)) for h in holders)
    if not (named or ("" in holders and rows != rank)) or rows % rank:  # "" : a bare parameter name, any module
        return 1
    return rows // rank


def describe_adalora_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(rank, None)`` of an AdaLoRA module: its rank is the number of non-zero singular values ``lora_E``."""
    if "lora_E" not in tensors:
        return None, None
    return int((tensors["lora_E"] != 0).sum()), None
