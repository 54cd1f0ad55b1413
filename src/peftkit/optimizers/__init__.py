"""Optimizers made for LoRA adapters, at PEFT's path ``peft.optimizers``.

* :func:`create_loraplus_optimizer`: LoRA+ (Hayou et al., 2024), ``B`` learns ``loraplus_lr_ratio`` times faster.
* :func:`create_lorafa_optimizer`: LoRA-FA (Zhang et al., 2023), ``A`` frozen, ``B``'s gradient projected.
* :func:`create_riemannian_optimizer`: Riemannian-preconditioned LoRA (Zhang & Pilanci, 2024).
"""

from peftkit.optimizers.lorafa import LoraFAOptimizer, create_lorafa_optimizer
from peftkit.optimizers.loraplus import create_loraplus_optimizer
from peftkit.optimizers.riemannian import create_riemannian_optimizer

__all__ = ["LoraFAOptimizer", "create_lorafa_optimizer", "create_loraplus_optimizer", "create_riemannian_optimizer"]
