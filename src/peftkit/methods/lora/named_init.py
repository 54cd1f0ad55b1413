"""Which initialisation writes a non-decomposing LoRA adapter's factors (``init_lora_weights``), and the
tensors an initialisation keeps frozen for good (MiCA's ``B``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from peftkit.methods.lora.init import init_linear_pair
from peftkit.methods.lora.mica import init_mica_
from peftkit.methods.lora.orthogonal import init_orthogonal_
from peftkit.quant.base import dense_weight


def init_factors(A: torch.Tensor, B: torch.Tensor, init: bool | str, r: int, base: Any, fan_in_fan_out: bool) -> None:
    """Write ``A (r, in, ...)`` and ``B (out, r, ...)`` per ``init``: ``"orthogonal"``
    (:mod:`~peftkit.methods.lora.orthogonal`), ``"mica"`` (:mod:`~peftkit.methods.lora.mica`, from the base layer's
    dense weight, ``(out, in)``), else :func:`~peftkit.methods.lora.init.init_linear_pair`."""
    if init == "orthogonal":
        init_orthogonal_(A, B, r, base.weight.dtype)
    elif init == "mica":
        weight = dense_weight(base)
        init_mica_(A, B, weight.T if fan_in_fan_out else weight, r)
    else:
        init_linear_pair(A, B, init, r)


def frozen_tensor_ids(layer: nn.Module, frozen_names: Mapping[str, Sequence[str]]) -> set[int]:
    """Ids of ``layer``'s adapter tensors named in ``frozen_names`` (adapter -> container names, PEFT's
    ``frozen_peft_weight_names``): they stay frozen whatever the adapter state."""
    found: set[int] = set()
    for adapter, names in frozen_names.items():
        for name in names:
            container = getattr(layer, name)
            item = container[adapter] if adapter in container else None
            tensors = item.parameters() if isinstance(item, nn.Module) else [item] if item is not None else []
            found.update(id(t) for t in tensors)
    return found
