"""KaSA, knowledge-aware singular-value adaptation (Wang et al., 2024, "KaSA: Knowledge-Aware Singular-Value
Adaptation of Large Language Models", arXiv:2412.06071); PEFT's ``LoraConfig(kasa_config=KasaConfig())``.

Two changes to LoRA on an ``nn.Linear`` with weight ``W (out, in)``, ``k = min(out, in)``:

1. When the adapter is added, ``W = U S V^T`` (SVD in float32) loses its ``r`` smallest singular components: the
   base keeps ``W' = U[:, :k-r] S[:k-r] V[:, :k-r]^T`` (the base weight is rewritten; disabling or deleting the
   adapter does not bring ``W`` back, and loading a saved adapter onto the original base truncates it again).
2. A trainable vector ``lora_diag (r,)`` (``Delta Sigma``, standard normal at init) sits between ``A (r, in)``
   and ``B (out, r)``: ``y = W' x + s * B (diag(lora_diag) A dropout(x))``, merged as
   ``Delta W = s * (B * lora_diag) @ A``.

The paper trains with two auxiliary losses, :func:`kasa_layer_loss` (summed over layers by
:func:`kasa_loss`, PEFT's ``LoraModel._get_kasa_loss``), that the user adds to the task loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from peftkit.errors import ConfigError, UsageError
from peftkit.merging.merge import update_weight
from peftkit.methods.lora.variant import LoraVariant
from peftkit.quant.base import dense_weight, weight_shape
from peftkit.targeting import pattern_value

if TYPE_CHECKING:
    from peftkit.methods.lora.layer import Linear, LoraLayer

#: The per-adapter container of ``lora_diag`` on a layer (PEFT's attribute and state-dict name).
DIAG = "lora_diag"


def build(config: Any, module_name: str, module: nn.Module) -> LoraVariant:
    """KaSA for the layer ``module_name`` (base layer ``module``), refused before anything is changed.

    Raises:
        ConfigError: ``module`` is not an ``nn.Linear`` (KaSA truncates an ``(out, in)`` weight: GPT-2's
            ``Conv1D``, embeddings and convolutions are refused), ``use_dora`` is set too, or the layer's rank is
            not below ``min(in, out)`` (no singular component of the base would be left).
    """
    if not isinstance(module, nn.Linear):
        raise ConfigError(
            f"KaSA (kasa_config) adapts nn.Linear layers only; {module_name!r} is a {type(module).__name__}. "
            "Leave it out of target_modules or set kasa_config=None."
        )
    if config.use_dora:
        raise ConfigError("kasa_config and use_dora=True are two LoRA variants that do not combine; choose one.")
    r = int(pattern_value(module_name, config.rank_pattern, config.r))
    k = min(weight_shape(module))
    if r >= k:
        raise ConfigError(
            f"KaSA requires `r` ({r}) below min(in_features, out_features) = {k} of {module_name!r}: it removes the "
            "r smallest singular components of the base weight and at least one must stay. Lower r there."
        )
    return KasaLinearVariant()


def truncate_minor_components(weight: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``weight (out, in)`` by its SVD (float32) into the kept and the ``r`` smallest components.

    Returns:
        ``(kept (out, in), U_d S_d (out, r), V_d^T (r, in))`` in float32, with ``kept + U_d S_d V_d^T == weight``.
    """
    U, S, Vh = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    keep = S.shape[0] - r
    kept = (U[:, :keep] * S[:keep]) @ Vh[:keep, :]
    return kept, U[:, keep:] * S[keep:], Vh[keep:, :]


class KasaLinearVariant(LoraVariant):
    """KaSA on a LoRA ``Linear`` (PEFT's class name); see the module docstring for the math."""

    name = "kasa"

    def __eq__(self, other: object) -> bool:
        """KaSA has no per-layer settings: any two are equal (a hot-swap at the same rank truncates the base alike)."""
        return isinstance(other, KasaLinearVariant)

    def __hash__(self) -> int:
        return hash(KasaLinearVariant)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def supports_lora_conversion(self) -> bool:
        """No: the base weight was truncated, so ``B diag(d) A`` is not an update of the original base."""
        return False

    def init(self, layer: LoraLayer, adapter: str, spec: Any) -> None:
        """Add ``lora_diag[adapter] (r,)`` (standard normal; ``B = 0`` keeps the update zero); the base weight's
        truncation waits for :meth:`finish`."""
        if DIAG not in layer._modules:
            layer.add_module(DIAG, nn.ParameterDict())
            names = (*layer.adapter_layer_names, DIAG)
            layer.__dict__["adapter_layer_names"] = names  # this layer's lora_diag saves, loads, trains like lora_A
        A = layer.factor_tensors(adapter)[0]
        getattr(layer, DIAG)[adapter] = nn.Parameter(torch.randn(spec.r, device=A.device, dtype=A.dtype))
        layer.__dict__.setdefault("_kasa_pending", set()).add(adapter)  # truncated by finish, or when first used

    def finish(self, layer: LoraLayer, adapter: str) -> None:
        """Truncate the base weight once every layer of the injection was accepted (a refusal changes nothing),
        unless the base is still on ``meta`` (then the adapter's first forward or merge does it)."""
        if not _base_on_meta(layer):
            apply_pending(layer, adapter)

    def adapt_output(self, layer: Linear, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``result + s * B(lora_diag * A(dropout(x)))``; the first call after a deferred truncation also removes
        the dropped components from ``result`` (computed with the untruncated base)."""
        dropped = apply_pending(layer, adapter)
        if dropped is not None:
            us, vh = dropped
            result = result - F.linear(F.linear(x.to(vh.dtype), vh), us).to(result.dtype)
        A, B = layer.lora_A[adapter], layer.lora_B[adapter]
        hidden = A(layer.lora_dropout[adapter](x).to(A.weight.dtype)) * getattr(layer, DIAG)[adapter]
        return result + (B(hidden) * layer.scaling[adapter]).to(result.dtype)

    def delta_weight(self, layer: LoraLayer, adapter: str) -> torch.Tensor:
        """``s * (B * lora_diag) @ A``, shape ``(out, in)`` (float32 arithmetic for half precision on CPU)."""
        apply_pending(layer, adapter)
        A, B = layer.factor_tensors(adapter)
        diag = getattr(layer, DIAG)[adapter]
        upcast = A.device.type == "cpu" and A.dtype in (torch.float16, torch.bfloat16)
        if upcast:
            A, B, diag = A.float(), B.float(), diag.float()
        delta = (B * diag) @ A * layer.scaling[adapter]
        return delta.to(layer.factor_tensors(adapter)[0].dtype)


def _base_on_meta(layer: LoraLayer) -> bool:
    return bool(layer.get_base_layer().weight.device.type == "meta")


def truncate_base(layer: LoraLayer, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite the base weight as its rank ``k - r`` truncation (quantized bases are requantized); returns the
    dropped components ``(U_d S_d (out, r), V_d^T (r, in))`` in float32."""
    base = layer.get_base_layer()
    kept, dropped_us, dropped_vh = truncate_minor_components(dense_weight(base), r)
    update_weight(base, lambda w: w.copy_(kept.to(w.dtype)))
    return dropped_us, dropped_vh


def apply_pending(layer: LoraLayer, adapter: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run the truncation deferred at init (base on ``meta`` then) for ``adapter``; ``None`` if none was pending.

    Raises:
        UsageError: the base weight is still on ``meta``.
    """
    pending: set[str] = layer.__dict__.get("_kasa_pending", set())
    if adapter not in pending:
        return None
    if _base_on_meta(layer):
        raise UsageError(
            f"KaSA adapter {adapter!r} must truncate its base weight, which is still on the meta device; load the "
            "base model's weights before running or merging it."
        )
    pending.discard(adapter)
    return truncate_base(layer, layer.r[adapter])


def kasa_layer_loss(layer: LoraLayer, adapter: str, beta: float, gamma: float) -> torch.Tensor:
    """``beta * sum(lora_diag ** 2) + gamma * (||B^T B - I||_F + ||A A^T - I||_F)`` (paper Eq. 9-11), float32."""
    A, B = (t.float() for t in layer.factor_tensors(adapter))
    diag = getattr(layer, DIAG)[adapter].float()
    eye = torch.eye(diag.shape[0], device=diag.device)
    orthogonality = torch.linalg.norm(B.T @ B - eye) + torch.linalg.norm(A @ A.T - eye)
    return beta * (diag**2).sum() + gamma * orthogonality


def kasa_loss(layers: Iterable[Any], kasa_configs: dict[str, Any], adapters: Iterable[str]) -> torch.Tensor | float:
    """Sum of :func:`kasa_layer_loss` over ``layers`` and ``adapters`` that have a ``lora_diag`` there, each with
    its adapter's ``KasaConfig`` (``kasa_configs``); ``0.0`` when none has."""
    wanted = [name for name in adapters if kasa_configs.get(name) is not None]
    total: torch.Tensor | float = 0.0
    for layer in layers:
        diags: Any = layer._modules.get(DIAG)
        for adapter in wanted:
            if diags is not None and adapter in diags:
                config = kasa_configs[adapter]
                total = total + kasa_layer_loss(layer, adapter, config.beta, config.gamma)
    return total
