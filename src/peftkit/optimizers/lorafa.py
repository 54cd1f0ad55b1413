"""LoRA-FA (Zhang et al., 2023, "LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models
Fine-tuning"): ``A`` stays frozen at its initialisation, only ``B`` trains.

With ``W' = W + s B A`` and ``A`` fixed, the update closest (in Frobenius norm) to full fine-tuning's gradient
``g`` of ``W`` is reached by projecting ``B``'s gradient onto ``A``'s row space::

    g_B  <-  (1 / s^2) * g_B @ (A A^T + delta I_r)^+          g_B: (out, r), A: (r, in), delta = 1e-8

``B`` then takes an AdamW step with that gradient (decoupled weight decay, applied after the step as
``B <- B - lr * wd * B``); every other trainable parameter takes the same AdamW step on its plain gradient. The
AdamW variant is transformers' former ``AdamW`` (``eps`` 1e-6, optional bias correction).

The projection is computed in at least float32; the reference computes it under bfloat16 autocast where the
machine supports bfloat16 (a documented difference: peftkit's steps are the reference's without that rounding).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from peftkit.errors import ConfigError

#: Pairs of (B, A) name parts: Linear / Conv LoRA factors, and an Embedding LoRA's factors.
_FACTOR_NAMES = ((".lora_B.", ".lora_A."), (".lora_embedding_B.", ".lora_embedding_A."))
_DELTA = 1e-8


@dataclass
class _Pair:
    """One LoRA layer's factors for one adapter, found by name in a parameter group."""

    key: str  # the optimizer-state key: the layer's name followed by ``lora`` (the reference's key)
    A: torch.Tensor
    B: torch.Tensor
    scaling: float


def _adamw_update(
    param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], suffix: str = ""
) -> None:
    """One decoupled-weight-decay Adam step of ``param`` with ``grad``; the state holds ``step``,
    ``exp_avg<suffix>`` and ``exp_avg_sq<suffix>`` (a LoRA pair's are ``exp_avg_B``, as in the reference)."""
    avg, avg_sq = "exp_avg" + suffix, "exp_avg_sq" + suffix
    if not state:
        state.update({"step": 0, avg: torch.zeros_like(param), avg_sq: torch.zeros_like(param)})
    beta1, beta2 = group["betas"]
    state["step"] += 1
    state[avg].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state[avg_sq].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = state[avg_sq].sqrt().add_(group["eps"])
    step_size = group["lr"]
    if group["correct_bias"]:
        step_size *= math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
    param.addcdiv_(state[avg], denom, value=-step_size)
    if group["weight_decay"] > 0.0:
        param.add_(param, alpha=-group["lr"] * group["weight_decay"])


def projected_b_grad(A: torch.Tensor, grad_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """LoRA-FA's gradient of ``B`` (shape of ``grad_B``): ``(1/s^2) g_B (A A^T + 1e-8 I)^+``, in float32 or wider.

    ``A`` is ``(r, in, ...)`` and ``grad_B`` ``(out, r, ...)`` (convolution factors are flattened to matrices).
    """
    dtype = torch.promote_types(A.dtype, torch.float32)
    a = A.detach().flatten(1).to(dtype)
    eye = torch.eye(a.shape[0], device=a.device, dtype=dtype)
    gram_inv = torch.linalg.pinv(a @ a.T + _DELTA * eye)
    g = grad_B.reshape(grad_B.shape[0], a.shape[0]).to(dtype)
    return ((g @ gram_inv) / scaling**2).reshape(grad_B.shape).to(grad_B.dtype)


class LoraFAOptimizer(Optimizer):
    """AdamW in which each LoRA layer's ``B`` takes LoRA-FA's projected gradient (see the module docstring).

    Every parameter group needs ``names`` (one per parameter, the model's parameter names, used to pair each
    ``lora_B`` with its ``lora_A``) and ``scaling_factors`` (one per parameter: the layer's ``s`` for LoRA
    factors, ``None`` elsewhere); :func:`create_lorafa_optimizer` builds them. A group with the former single
    ``scaling_factor`` still works, with a ``FutureWarning``.

    Args:
        params: Parameter groups (dicts as above).
        lr: Learning rate (default 1e-3).
        betas: Adam's moment coefficients, each in ``[0, 1)``.
        eps: Added to the second moment's square root, ``>= 0``.
        weight_decay: Decoupled weight decay.
        correct_bias: Adam's bias correction.

    Raises:
        ConfigError: an invalid hyper-parameter, a group without ``names`` / scaling factors, or two trainable
            adapters on one layer (their optimizer state would share one key).
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]] | Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ConfigError(f"LoraFAOptimizer: lr must be >= 0, got {lr}.")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError(f"LoraFAOptimizer: both betas must be in [0, 1), got {betas}.")
        if eps < 0.0:
            raise ConfigError(f"LoraFAOptimizer: eps must be >= 0, got {eps}.")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "correct_bias": correct_bias}
        super().__init__(params, defaults)
        self._warned_legacy_scaling = False

    def _scalings(self, group: dict[str, Any]) -> list[float | None]:
        if "scaling_factors" in group:
            return list(group["scaling_factors"])
        if "scaling_factor" in group:
            if not self._warned_legacy_scaling:
                warnings.warn(
                    "LoraFAOptimizer: the parameter-group key `scaling_factor` is deprecated; give "
                    "`scaling_factors` instead, one entry per parameter (None for non-LoRA ones).",
                    FutureWarning,
                    stacklevel=3,
                )
                self._warned_legacy_scaling = True
            return [group["scaling_factor"]] * len(group["params"])
        raise ConfigError("LoraFAOptimizer: each parameter group needs `scaling_factors` (one per parameter).")

    def _pairs(self, group: dict[str, Any]) -> tuple[list[_Pair], set[int]]:
        """The group's LoRA factor pairs whose ``B`` has a gradient, and the ids of every factor paired."""
        if "names" not in group:
            raise ConfigError("LoraFAOptimizer: each parameter group needs `names` (one per parameter).")
        by_name = dict(zip(group["names"], zip(group["params"], self._scalings(group), strict=True), strict=True))
        pairs: list[_Pair] = []
        paired: set[int] = set()
        for name, (B, scaling) in by_name.items():
            for b_part, a_part in _FACTOR_NAMES:
                if b_part not in name or name.replace(b_part, a_part) not in by_name or B.ndim < 2:
                    continue
                A = by_name[name.replace(b_part, a_part)][0]
                paired.update((id(A), id(B)))
                if B.grad is not None:
                    if scaling is None:
                        raise ConfigError(f"LoraFAOptimizer: no scaling factor was given for {name}.")
                    pairs.append(_Pair(name[: name.find("lora")] + "lora", A, B, float(scaling)))
        keys = [pair.key for pair in pairs]
        if len(set(keys)) != len(keys):
            raise ConfigError(
                "LoraFAOptimizer trains one adapter per LoRA layer; several trainable adapters share a layer "
                f"({sorted(k for k in keys if keys.count(k) > 1)}). Train them one at a time (set_adapter)."
            )
        return pairs, paired

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step: LoRA-FA for every ``(A, B)`` pair (``A`` untouched), AdamW for the other parameters.

        Args:
            closure: Re-evaluates the model and returns the loss (run under ``torch.enable_grad``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            pairs, paired = self._pairs(group)
            for pair in pairs:
                grad_B = projected_b_grad(pair.A, pair.B.grad, pair.scaling)  # type: ignore[arg-type]
                state = self.state[pair.key]  # type: ignore[index]  # keyed by layer name, as the reference does
                _adamw_update(pair.B, grad_B, state, group, suffix="_B")
            for param in group["params"]:
                if id(param) not in paired and param.grad is not None:
                    _adamw_update(param, param.grad, self.state[param], group)
        return loss


def _layer_scaling(model: nn.Module, name: str) -> float | None:
    """The scaling ``s`` of the LoRA layer that holds parameter ``name`` for its adapter; ``None`` elsewhere.

    ``layer.lora_A.<adapter>.weight`` and ``layer.lora_embedding_A.<adapter>`` both name the layer before
    ``.lora_`` and the adapter right after the factor's own name.
    """
    layer_name, found, rest = name.rpartition(".lora_")
    parts = rest.split(".")
    if not found or len(parts) < 2:
        return None
    scaling = getattr(model.get_submodule(layer_name), "scaling", None)
    return float(scaling[parts[1]]) if isinstance(scaling, dict) and parts[1] in scaling else None


def _check_rslora(model: nn.Module, use_rslora: bool | None) -> None:
    """The deprecated ``use_rslora`` argument must agree with every active adapter's config (warned either way)."""
    if use_rslora is None:
        return
    configs = getattr(model, "peft_config", {}) or {}
    active = getattr(model, "active_adapters", [])
    active = active() if callable(active) else active
    differing = [
        name for name in active if name in configs and bool(getattr(configs[name], "use_rslora", False)) != use_rslora
    ]
    if differing:
        raise ConfigError(
            f"use_rslora={use_rslora} was passed to create_lorafa_optimizer, but the active adapters {differing} "
            f"are configured with use_rslora={not use_rslora}; drop the argument (each layer's own scaling is used)."
        )
    warnings.warn(
        "create_lorafa_optimizer: the use_rslora argument is deprecated; rsLoRA is read from each adapter's "
        "LoraConfig, so drop the argument.",
        FutureWarning,
        stacklevel=3,
    )


def create_lorafa_optimizer(
    model: nn.Module,
    r: int,
    lora_alpha: int | float,
    lr: float,
    weight_decay: float = 0.0,
    use_rslora: bool | None = None,
) -> LoraFAOptimizer:
    """Freeze every LoRA ``A`` of ``model`` and return a :class:`LoraFAOptimizer` over all its parameters.

    Args:
        model: A model holding LoRA layers (``PeftModel`` or injected in place).
        r: The adapter's rank; kept for PEFT's signature (each layer's own ``scaling``, so ``rank_pattern`` and
            ``alpha_pattern``, is what the projection uses).
        lora_alpha: Likewise kept for PEFT's signature.
        lr: Learning rate.
        weight_decay: Decoupled weight decay (betas ``(0.9, 0.999)``, eps 1e-6).
        use_rslora: Deprecated; when given it must match the active adapters' configs.

    Raises:
        ConfigError: ``use_rslora`` disagrees with an active adapter's config.
    """
    _check_rslora(model, use_rslora)
    named = list(model.named_parameters())
    for name, param in named:
        if ".lora_A." in name or ".lora_embedding_A." in name:
            param.requires_grad_(False)
    group = {
        "params": [param for _, param in named],
        "names": [name for name, _ in named],
        "scaling_factors": [_layer_scaling(model, name) for name, _ in named],
        "lr": lr,
        "betas": (0.9, 0.999),
        "weight_decay": weight_decay,
    }
    return LoraFAOptimizer([group])
