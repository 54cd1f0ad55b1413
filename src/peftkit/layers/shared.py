"""Tensors an adapter holds once per model and shares between its layers (VeRA's frozen random projections).

One holder per model, one child per adapter whose tensors are *non-persistent* buffers. The model keeps it
as a plain attribute :data:`HOLDER_NAME` (a submodule would run in ``nn.Sequential``'s forward), and every
adapter layer that uses it registers it as its child of that name: so it follows ``model.to(...)`` (layers
look the tensors up at forward time, never keep a stale reference) and stays out of ``model.state_dict()``;
an adapter's file gets the tensors from the method's spec (:class:`peftkit.methods.spec.ModelTensors`) when it
says they are saved.
"""

from __future__ import annotations

import torch
from torch import nn

#: Attribute of the adapted model that holds the shared tensors.
HOLDER_NAME = "peft_shared_tensors"


class SharedTensors(nn.Module):
    """Per adapter, named tensors held once per model."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()

    def add(self, adapter: str, tensors: dict[str, torch.Tensor]) -> None:
        """Hold ``tensors`` for ``adapter`` (replacing what it held)."""
        holder = nn.Module()
        for name, tensor in tensors.items():
            holder.register_buffer(name, tensor, persistent=False)
        self.adapters[adapter] = holder

    def holds(self, adapter: str) -> bool:
        """Whether ``adapter`` has tensors here."""
        return adapter in self.adapters

    def get(self, adapter: str) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of ``adapter`` (the live buffers: writing into them changes the model)."""
        return dict(self.adapters[adapter].named_buffers())

    def remove(self, adapter: str) -> None:
        """Drop ``adapter``'s tensors (nothing if it has none)."""
        if adapter in self.adapters:
            del self.adapters[adapter]


def shared_tensors(model: nn.Module) -> SharedTensors | None:
    """The holder of ``model``'s shared tensors, or ``None``."""
    holder = model.__dict__.get(HOLDER_NAME)
    return holder if isinstance(holder, SharedTensors) else None


def holder_for(model: nn.Module) -> SharedTensors:
    """``model``'s holder, created (and attached) when it has none."""
    holder = shared_tensors(model)
    if holder is None:
        holder = SharedTensors()
        model.__dict__[HOLDER_NAME] = holder
    return holder


def drop_shared_tensors(model: nn.Module, adapter: str) -> None:
    """Remove ``adapter``'s shared tensors, and the holder once it is empty."""
    holder = shared_tensors(model)
    if holder is None:
        return
    holder.remove(adapter)
    if not len(holder.adapters):
        forget_shared_tensors(model)


def forget_shared_tensors(model: nn.Module) -> None:
    """Detach the holder from ``model`` and from every layer that registered it."""
    for module in model.modules():
        module._modules.pop(HOLDER_NAME, None)
    model.__dict__.pop(HOLDER_NAME, None)
