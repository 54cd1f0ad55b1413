"""Counting a model's parameters as PEFT reports them (``print_trainable_parameters``)."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, counting packed 4-bit weights at their unpacked size."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if n == 0 and hasattr(param, "ds_numel"):
            n = param.ds_numel
        if type(param).__name__ == "Params4bit":
            n *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total
