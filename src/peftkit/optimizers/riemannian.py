"""Riemannian-preconditioned LoRA (Zhang & Pilanci, 2024, "Riemannian Preconditioned LoRA for Fine-Tuning
Foundation Models").

Before each step of an ordinary optimizer, every LoRA pair's gradients are rescaled by ``r x r`` matrices,
which turns the Euclidean gradients into the scaled-gradient (Riemannian) directions of the paper::

    g_A  <-  (B^T B + reg I_r)^+ @ g_A          A: (r, in),  B: (out, r)
    g_B  <-  g_B @ (A A^T + reg I_r)^+

``reg`` damps the inverse when a factor is (nearly) rank-deficient, e.g. ``B = 0`` at the start. The products
are computed in at least float32 and cast back to the gradients' dtype. Only 2-d ``lora_A`` / ``lora_B`` weights
that both train are preconditioned; everything else (DoRA magnitudes, biases, LoRA on embeddings) takes the
base optimizer's plain step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from peftkit.errors import ArgumentTypeError, ConfigError, UsageError

LoraPair = tuple[nn.Parameter, nn.Parameter]


def lora_factor_pairs(model: nn.Module) -> list[LoraPair]:
    """``(lora_A, lora_B)`` weight pairs of ``model`` that are both 2-d and trainable, in parameter order."""
    params = dict(model.named_parameters())
    pairs = []
    for name, A in params.items():
        B = params.get(name.replace(".lora_A.", ".lora_B.")) if ".lora_A." in name else None
        if B is not None and A.ndim == 2 and B.ndim == 2 and A.requires_grad and B.requires_grad:
            pairs.append((A, B))
    return pairs


def _damped_pinv(gram: torch.Tensor, reg: float) -> torch.Tensor:
    eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
    return torch.linalg.pinv(gram + reg * eye)


class RiemannianPreconditioner:
    """Rescales the gradients of ``pairs`` in place (see the module docstring); ``reg`` is the damping."""

    def __init__(self, pairs: list[LoraPair], reg: float) -> None:
        self.lora_pairs = pairs
        self.reg = reg

    @torch.no_grad()
    def step(self) -> None:
        """Precondition every pair's ``.grad`` (pairs without gradients are skipped)."""
        for A, B in self.lora_pairs:
            dtype = torch.promote_types(A.dtype, torch.float32)
            a, b = A.detach().to(dtype), B.detach().to(dtype)
            if A.grad is not None:
                A.grad.copy_((_damped_pinv(b.T @ b, self.reg) @ A.grad.to(dtype)).to(A.grad.dtype))
            if B.grad is not None:
                B.grad.copy_((B.grad.to(dtype) @ _damped_pinv(a @ a.T, self.reg)).to(B.grad.dtype))


# The reference's private names, which its own tests import from this path.
_collect_lora_pairs = lora_factor_pairs
_RiemannianPreconditioner = RiemannianPreconditioner


def _requires_closure(optimizer_cls: type[Optimizer]) -> bool:
    closure = inspect.signature(optimizer_cls.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def create_riemannian_optimizer(
    model: nn.Module, optimizer_cls: type[Optimizer], *, lr: float, reg: float = 1e-2, **kwargs: Any
) -> Optimizer:
    """An instance of a subclass of ``optimizer_cls`` whose ``step`` first preconditions the LoRA gradients.

    Args:
        model: A model holding LoRA layers; all its trainable parameters are optimised.
        optimizer_cls: The base optimizer (``torch.optim.AdamW``, ``SGD``, ...); one whose ``step`` requires a
            closure (``LBFGS``) is refused: it re-evaluates the loss inside ``step``, undoing the preconditioning.
        lr: Learning rate of the base optimizer.
        reg: Damping added to the ``r x r`` Gram matrices' diagonal before the pseudo-inverse.
        **kwargs: Passed on to ``optimizer_cls`` (``weight_decay``, ``betas``, ``momentum``, ...).

    Raises:
        ArgumentTypeError: ``optimizer_cls`` is not a subclass of ``torch.optim.Optimizer``.
        ConfigError: the model has no trainable 2-d ``lora_A`` / ``lora_B`` pair, or the optimizer requires a
            closure.
        UsageError: ``step`` is called with a closure.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise ArgumentTypeError(f"optimizer_cls must be a subclass of torch.optim.Optimizer, got {optimizer_cls!r}.")
    pairs = lora_factor_pairs(model)
    if not pairs:
        raise ConfigError(
            "create_riemannian_optimizer: the model has no trainable lora_A/lora_B parameter pairs (2-d LoRA "
            "weights); add a LoRA adapter and make it trainable first."
        )
    if _requires_closure(optimizer_cls):
        raise ConfigError(
            f"{optimizer_cls.__name__}.step requires a closure (it re-evaluates the loss inside step, which would "
            "discard the preconditioned gradients); use an optimizer whose closure is optional, e.g. AdamW or SGD."
        )
    preconditioner = RiemannianPreconditioner(pairs, reg=reg)

    def step(self: Optimizer, closure: Callable[[], float] | None = None) -> Any:
        if closure is not None:
            raise UsageError(
                "The Riemannian-preconditioned optimizer does not support closures: a closure recomputes the "
                "gradients inside step, after they were preconditioned. Call loss.backward() before step()."
            )
        preconditioner.step()
        return optimizer_cls.step(self)

    cls = type(f"Riemannian{optimizer_cls.__name__}", (optimizer_cls,), {"step": torch.no_grad()(step)})
    trainable = [param for param in model.parameters() if param.requires_grad]
    return cls(trainable, lr=lr, **kwargs)
