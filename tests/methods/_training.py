"""A few Adam steps on a model's trainable tensors, for the methods' "training lowers the loss" tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def adam_losses(model: nn.Module, loss_of: Callable[[], torch.Tensor], steps: int, lr: float) -> list[float]:
    """The loss before each of ``steps`` Adam steps (``lr``) over the parameters that require grad."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
