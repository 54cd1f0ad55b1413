"""The dtype of an adapter's tensors: ``autocast_adapter_dtype``, as PEFT's entry points take it.

PEFT trains adapters in float32 on a half-precision base by default (``autocast_adapter_dtype=True``: float16,
bfloat16 and float8 adapter tensors are upcast to float32, for stable optimizer updates); with
``autocast_adapter_dtype=False`` an adapter's tensors take its base layer's floating dtype (so a bfloat16 model
gets bfloat16 adapters). Integer tensors and quantized (non-floating) base weights never drive a cast.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.walk import iter_adapter_modules

#: Floating dtypes upcast to float32 under ``autocast_adapter_dtype=True`` (float8 kinds where torch has them).
UPCAST_DTYPES: frozenset[torch.dtype] = frozenset(
    {torch.float16, torch.bfloat16}
    | {
        dtype
        for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
        if isinstance(dtype := getattr(torch, name, None), torch.dtype)
    }
)


def _target_dtype(current: torch.dtype, base: torch.dtype | None, autocast: bool) -> torch.dtype | None:
    if not current.is_floating_point:
        return None
    if autocast:
        return torch.float32 if current in UPCAST_DTYPES else None
    return base if base is not None and base != current else None


def _base_dtype(layer: AdapterLayer) -> torch.dtype | None:
    try:
        weight = layer.weight  # the base layer's main weight (an attention module's input projection)
    except AttributeError:
        return None
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight.dtype
    return None


def _adapter_tensors(layer: AdapterLayer, adapter_name: str) -> list[torch.Tensor]:
    """The parameters and buffers that ``layer`` holds for ``adapter_name`` (in its per-adapter containers)."""
    tensors: list[torch.Tensor] = []
    modules, fields = layer._modules, layer.__dict__
    for attr in layer.adapter_layer_names + layer.other_param_names:
        # containers are registered modules; a plain setting (``r``, ``scaling``) or an absent name is skipped
        # without ``getattr``, whose miss through ``nn.Module.__getattr__`` raises and catches an exception
        container = modules[attr] if attr in modules else fields.get(attr)
        if isinstance(container, nn.ModuleDict):  # its entries are its registered children
            item = container._modules.get(adapter_name)
        elif isinstance(container, nn.ParameterDict) and adapter_name in container:
            item = container[adapter_name]
        else:
            continue
        if item is None:
            continue
        if not isinstance(item, nn.Module):
            tensors.append(item)
        elif item._modules:  # nested: the generic walk
            tensors += [*item.parameters(), *item.buffers()]
        else:  # a leaf module (the usual ``nn.Linear`` factor): its own dictionaries
            tensors += [t for t in (*item._parameters.values(), *item._buffers.values()) if t is not None]
    return tensors


def cast_adapter_dtype(model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
    """Set the dtype of adapter ``adapter_name``'s tensors in every adapter layer of ``model``, in place.

    ``autocast_adapter_dtype=True``: float16 / bfloat16 / float8 tensors become float32; others are kept.
    ``False``: floating tensors take the dtype of their layer's base weight when that is floating (a quantized
    base keeps float32 adapters). Parameters keep their identity (``param.data`` is replaced), so an optimizer
    built before the call still holds them. Prompt-learning adapters are not touched (they have no layers).
    """
    for _, layer in iter_adapter_modules(model):
        if not isinstance(layer, AdapterLayer):
            continue
        base = None if autocast_adapter_dtype else _base_dtype(layer)  # autocasting never reads it
        for tensor in _adapter_tensors(layer, adapter_name):
            dtype = _target_dtype(tensor.dtype, base, autocast_adapter_dtype)
            if dtype is not None:
                tensor.data = tensor.data.to(dtype)
