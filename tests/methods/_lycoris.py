"""Shared pieces of the LoHa / LoKr tests: tiny one-layer models and the independent formula oracles."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import peftkit as peft

# kind -> (base layer factory, input shape); odd sizes and a grouped conv exercise the factorizations.
LAYERS = {
    "linear": (lambda: nn.Linear(12, 8), (3, 4, 12)),
    "linear_wide": (lambda: nn.Linear(48, 40), (3, 2, 48)),  # LoHa / LoKr apply their factors without delta W
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (2, 4, 7)),
    "conv1d_k1": (lambda: nn.Conv1d(4, 6, 1), (2, 4, 7)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2), (2, 4, 5, 5)),
    "conv2d_grouped": (lambda: nn.Conv2d(4, 6, (3, 2), groups=2, padding_mode="reflect", padding=1), (2, 4, 5, 5)),
    "conv2d_1x1": (lambda: nn.Conv2d(4, 6, 1), (2, 4, 5, 5)),
}


def one_layer(kind: str, config: peft.PeftConfig, seed: int = 0) -> tuple[nn.Module, peft.PeftModel, torch.Tensor]:
    """``(fresh base copy, PeftModel with random factors, input)`` for a one-layer model of ``kind``."""
    factory, shape = LAYERS[kind]
    torch.manual_seed(seed)
    base = nn.Sequential(factory())
    twin = nn.Sequential(factory())
    twin.load_state_dict(base.state_dict())
    model = peft.get_peft_model(twin, config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    return base.eval(), model, torch.randn(shape, generator=gen)


def factors_of(model: nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """``{PEFT name: tensor}`` of the one adapted layer's factors (``hada_w1_a``, ``lokr_w1``...)."""
    layer = model.base_model.model[0]
    return {
        name: getattr(layer, name)[adapter].detach()
        for name in layer.adapter_layer_names
        if adapter in getattr(layer, name)
    }


def apply_weight(base: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The base layer's operation with ``weight`` in place of its own (same bias and geometry)."""
    layer: Any = base[0]
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if layer.padding_mode != "zeros":
        pad = [p for p in reversed(layer.padding) for _ in range(2)]
        x = F.pad(x, pad, mode=layer.padding_mode)
        padding: Any = 0
    else:
        padding = layer.padding
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return conv(x, weight, layer.bias, layer.stride, padding, layer.dilation, layer.groups)


def cp(core: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """CP reconstruction ``out[p, r, k, l] = sum_ij core[i, j, k, l] w_a[i, p] w_b[j, r]`` as two matrix products."""
    inner = core.permute(2, 3, 0, 1) @ w_b  # (k, l, i, r)
    return (w_a.T @ inner).permute(2, 3, 0, 1)  # (k, l, p, r) -> (p, r, k, l)


def kron(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Kronecker product of ``(a, c)`` and ``(b, d, *k)``:
    ``out[i*b + j, m*d + n, ...] = left[i, m] right[j, n, ...]``."""
    a, c = left.shape
    b, d = right.shape[:2]
    rest = right.shape[2:]
    outer = left[:, None, :, None].reshape(a, 1, c, 1, *([1] * len(rest))) * right[None, :, None]
    return outer.reshape(a * b, c * d, *rest)
