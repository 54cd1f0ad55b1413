"""The protocol every quantization backend implements, and the one lookup that picks a backend for a module.

A quantized base layer stores its weight in a packed form (bitsandbytes' ``Params4bit`` is a ``(out * in / 2,
1)`` byte tensor, ``Int8Params`` an int8 matrix plus row scales, torchao a tensor subclass). Adapters never
read that storage directly; they ask the module's :class:`QuantBackend` for

* the *logical* weight shape ``(out, in)`` (adapter shapes come from it, never from the packed tensor),
* the dequantized weight ``W (out, in)`` in floating point (DoRA norms, merging, the input gradient),
* a requantized replacement of the weight (merging: dequantize, add, requantize),
* a snapshot of the exact packed weight and its restoration (unmerge gives back what it started from).

Backends are found by :func:`backend_for`, which asks each registered backend in turn. The optional
libraries are imported lazily inside their backend's module (``bnb.py``, ``torchao.py``), and only when
already imported by the caller: a layer cannot be a bitsandbytes layer unless ``bitsandbytes`` is loaded.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import torch
from torch import nn


class QuantBackend(Protocol):
    """How peftkit reads and writes the weight of one kind of quantized linear layer.

    Every method takes the base module (e.g. a ``bnb.nn.Linear4bit``); the weight is ``W (out, in)``.
    """

    #: Short name used in messages ("bitsandbytes 4-bit", "torchao Int8Tensor").
    name: str

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is a layer this backend handles."""
        ...

    def weight_shape(self, module: nn.Module) -> torch.Size:
        """The logical ``(out, in)`` shape of the weight (not the packed storage's)."""
        ...

    def dequantize(self, module: nn.Module) -> torch.Tensor:
        """``W (out, in)`` in float32, a fresh tensor (callers may modify it)."""
        ...

    def compute_dtype(self, module: nn.Module) -> torch.dtype:
        """The dtype the layer computes its matmul in."""
        ...

    def replace_weight(self, module: nn.Module, weight: torch.Tensor) -> None:
        """Quantize ``weight (out, in)`` with the layer's own scheme and make it the layer's weight.

        The previous packed weight object is not modified (a :meth:`snapshot` of it stays valid).
        """
        ...

    def snapshot(self, module: nn.Module) -> Any:
        """An opaque handle on the layer's current packed weight (and whatever state its forward reads)."""
        ...

    def restore(self, module: nn.Module, snapshot: Any) -> None:
        """Put the weight captured by :meth:`snapshot` back, bit for bit."""
        ...

    def prepare(self, module: nn.Module) -> None:
        """Make the layer fit for adapters (called once when an adapter layer wraps it)."""
        ...

    def release(self, module: nn.Module) -> None:
        """Undo :meth:`prepare` (called when the adapter layer is unloaded)."""
        ...

    def training_error(self, module: nn.Module) -> str | None:
        """Why gradients cannot flow through this layer, or ``None`` when they can."""
        ...


def _backends() -> list[QuantBackend]:
    """The backends whose library is already imported (a module of a library not loaded cannot be its layer)."""
    found: list[QuantBackend] = []
    if "bitsandbytes" in sys.modules:
        from peftkit.quant import bnb

        found.extend(bnb.BACKENDS)
    if "torchao" in sys.modules:
        from peftkit.quant import torchao

        found.extend(torchao.BACKENDS)
    return found


def _weight_of(module: nn.Module) -> Any:
    """``getattr(module, "weight", None)``, without the cost of ``nn.Module.__getattr__``'s miss (an exception)
    for the many modules that have no weight (this runs for every module a targeting walk visits)."""
    for registry in (module._parameters, module._buffers, module._modules, module.__dict__):
        if "weight" in registry:
            return registry["weight"]
    return getattr(module, "weight", None) if hasattr(type(module), "weight") else None


def backend_for(module: nn.Module) -> QuantBackend | None:
    """The backend of ``module`` if it is a quantized layer peftkit knows, else ``None``.

    Cheap for ordinary layers: a plain ``nn.Parameter`` weight is never quantized (bitsandbytes and torchao
    weights are tensor subclasses).
    """
    weight = _weight_of(module)
    if weight is None or type(weight) in (nn.Parameter, torch.Tensor):
        return None
    for backend in _backends():
        if backend.matches(module):
            return backend
    return None


def weight_shape(module: nn.Module) -> torch.Size:
    """The logical shape of ``module.weight`` (through the backend for quantized layers)."""
    backend = backend_for(module)
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return weight.shape if backend is None else backend.weight_shape(module)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` itself, or for a quantized layer its dequantized float32 copy ``(out, in)``."""
    backend = backend_for(module)
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return weight if backend is None else backend.dequantize(module)


def dense_tensor(weight: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the values of ``weight``: itself, or dequantized for a self-describing quantized
    tensor subclass (torchao's ``dequantize()``), in the subclass's reported dtype. Used where only the weight
    tensor is at hand (the fused LoRA backward's input gradient ``g W``)."""
    if type(weight) in (torch.Tensor, nn.Parameter):
        return weight
    dequantize = getattr(weight, "dequantize", None)
    if dequantize is None or weight.is_quantized:
        return weight
    return dequantize()
