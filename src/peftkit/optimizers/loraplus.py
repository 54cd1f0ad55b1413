"""LoRA+ (Hayou, Ghosh & Yu, 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models").

With ``W' = W + s B A`` and the usual ``B = 0`` start, the paper shows that one learning rate for both factors is
inefficient for wide layers: ``B`` should learn faster, ``eta_B = loraplus_lr_ratio * eta_A``. The helper builds
the four parameter groups of the reference implementation:

* A: every other trainable parameter (``lora_A``, fully trained modules): ``lr``, ``loraplus_weight_decay``;
* embedding: the factors of LoRA layers on ``nn.Embedding``: ``loraplus_lr_embedding`` (default 1e-6),
  ``loraplus_weight_decay``;
* B: ``lora_B`` and 1-d parameters (DoRA magnitudes, ...) that are decayed (not a bias, not in a layer norm):
  ``lr * loraplus_lr_ratio``, ``loraplus_weight_decay``;
* B without decay: the other ``lora_B`` / 1-d parameters (biases, layer norms): ``lr * loraplus_lr_ratio``, 0.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from peftkit.methods.lora.embedding import Embedding

_EIGHT_BIT = ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit")


def _group_of(model: nn.Module, name: str, param: nn.Parameter, decayed: set[str]) -> str:
    """Which LoRA+ group the trainable parameter ``name`` belongs to (see the module's table)."""
    # An adapter's tensors sit two levels below their LoRA layer (``layer.lora_embedding_A.<adapter>``), so the
    # layer is the name minus its last two parts (nothing left: a top-level parameter, no layer to ask).
    owner_name = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
    owner = model.get_submodule(owner_name) if owner_name else None
    if isinstance(owner, Embedding):
        return "embedding"
    if "lora_B" in name or param.ndim == 1:
        return "B" if name in decayed else "B_no_decay"
    return "A"


def create_loraplus_optimizer(
    model: nn.Module, optimizer_cls: type[Optimizer], *, lr: float, loraplus_lr_ratio: float, **kwargs: Any
) -> Optimizer:
    """An ``optimizer_cls`` over ``model``'s trainable parameters in LoRA+'s four groups.

    Args:
        model: A model holding LoRA layers (a ``PeftModel`` or a model with injected adapters); frozen
            parameters are left out.
        optimizer_cls: Any ``torch.optim.Optimizer`` class (``AdamW``, bitsandbytes' 8-bit Adams, ...).
        lr: ``eta_A``, the learning rate of ``A`` and of every parameter outside the ``B`` groups.
        loraplus_lr_ratio: ``eta_B / eta_A`` (the paper recommends values well above 1, e.g. 16).
        **kwargs: ``loraplus_weight_decay`` (default 0.0) and ``loraplus_lr_embedding`` (default 1e-6) are taken
            here; everything else goes to ``optimizer_cls``.

    Returns:
        The optimizer, with groups in the order A, embedding, B, B-without-decay (empty groups included). For
        bitsandbytes' 8-bit Adams, embedding weights are registered for 32-bit optimizer state, as that library
        advises.
    """
    decayed = {name for name in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in name}
    groups: dict[str, list[nn.Parameter]] = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[_group_of(model, name, param, decayed)].append(param)
    weight_decay = kwargs.pop("loraplus_weight_decay", 0.0)
    lr_embedding = kwargs.pop("loraplus_lr_embedding", 1e-6)
    kwargs["lr"] = lr
    param_groups = [
        {"params": groups["A"], "weight_decay": weight_decay, "lr": lr},
        {"params": groups["embedding"], "weight_decay": weight_decay, "lr": lr_embedding},
        {"params": groups["B"], "weight_decay": weight_decay, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]
    optimizer = optimizer_cls(param_groups, **kwargs)
    if optimizer_cls.__name__ in _EIGHT_BIT:
        import bitsandbytes  # only reachable with one of its optimizers, so it is installed

        manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer
