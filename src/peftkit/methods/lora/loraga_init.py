"""LoRA-GA's initialisation of one layer (Wang et al., 2024, "LoRA-GA: Low-Rank Adaptation with Gradient
Approximation", arXiv:2407.05000).

:func:`~peftkit.methods.lora.loraga.preprocess_loraga` leaves on each target ``nn.Linear`` / ``Conv1D`` the mean
gradient of its weight, ``G (out, in)``, as ``_peft_loraga_grad`` (PEFT's attribute). Then, with ``s`` the LoRA
scaling and ``G ~= U S V^T`` its top ``2r`` singular triplets (``torch.svd_lowrank``, ``q = min(4r, out, in)``, 4
subspace iterations):

* ``A = V[:, I_A]^T (r, in)`` and ``B = U[:, I_B] diag(S[I_B]) (out, r)``, the index sets ``I_A``, ``I_B`` of
  ``0..2r-1`` chosen by ``LoraGAConfig.direction``;
* rescaled by ``LoraGAConfig.scale``: ``"stable"`` ``B *= n^(1/4) / sqrt(gamma)`` (``n`` the stored weight's first
  dimension, as the reference computes it: ``out`` for ``nn.Linear``, ``in`` for ``Conv1D``), ``"weight_svd"``
  ``B *= sigma_1(W) / S[I_B][0]``, ``"gd_scale"`` ``A /= s, B /= s``, ``"unit"`` nothing;
* ``A``, ``B`` rounded to the base weight's dtype, and the base weight becomes ``W - s B A`` (computed in float32),
  so that the adapted model starts out computing what the base did.

A layer without the gradient (an adapter being loaded, a layer ``preprocess_loraga`` did not reach, embeddings,
convolutions) gets ``init_lora_weights=True``'s factors, as in the reference.

Randomness: the reference builds ``A`` and ``B`` as ``nn.Linear`` modules (whose constructors draw Kaiming-uniform
weights) before this runs, and ``svd_lowrank`` draws its random projection; the signs of the singular vectors depend
on that projection. :func:`init_lora_ga_` draws the same numbers in the same order, so the same seed gives the same
factors as the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.errors import ConfigError
from peftkit.merging.merge import update_weight
from peftkit.methods.lora.init import require_matrix_factors, write_factors_
from peftkit.methods.lora.layer_spec import LoraLayerSpec
from peftkit.methods.lora.loraga_config import LoraGAConfig
from peftkit.targeting import pattern_value

#: The attribute ``preprocess_loraga`` leaves on a target layer (PEFT's name): the mean gradient of its weight.
GRAD_ATTR = "_peft_loraga_grad"


def _missing_options() -> ConfigError:
    return ConfigError(
        "init_lora_weights='lora_ga' needs LoRA-GA's options: pass lora_ga_config=LoraGAConfig(...) to the "
        "LoraConfig (the same one given to preprocess_loraga)."
    )


def _rank_error(r: int, shape: tuple[int, ...]) -> ConfigError:
    return ConfigError(
        f"LoRA-GA splits the top 2r = {2 * r} singular directions of the weight's gradient between A and B, but a "
        f"{shape} weight has only {min(shape)}; use r <= {min(shape) // 2} for this layer (rank_pattern) or leave it "
        "out of target_modules."
    )


def check_lora_ga(config: Any, model: nn.Module) -> None:
    """Before injecting a LoRA-GA adapter (nothing changed yet): every layer holding a gradient can take its rank,
    and the options are there.

    Raises:
        ConfigError: ``lora_ga_config`` is missing while gradients are attached, or a layer's ``2r`` exceeds the
            smaller side of its weight.
    """
    if getattr(config, "init_lora_weights", None) != "lora_ga":
        return
    for name, module in model.named_modules():
        grad = getattr(module, GRAD_ATTR, None)
        if grad is None:
            continue
        if not isinstance(config.lora_ga_config, LoraGAConfig):
            raise _missing_options()
        r = int(pattern_value(name, config.rank_pattern, config.r))
        if 2 * r > min(grad.shape):
            raise _rank_error(r, tuple(grad.shape))


def split_indices(direction: str, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I_A, I_B)``: which of the top ``2r`` singular directions (``0`` the largest) ``A`` and ``B`` take.
    ``"random"`` draws one permutation (``torch.randperm(2r)``) and uses its first ``r`` for both."""
    steps = torch.arange(2 * r)
    if direction == "ArBr":
        return steps[1::2], steps[0::2]
    if direction == "A2rBr":
        return steps[r:], steps[:r]
    if direction == "ArB2r":
        return steps[:r], steps[r:]
    chosen = torch.randperm(2 * r)[:r]
    return chosen, chosen


def lora_ga_factors(
    grad: torch.Tensor, weight: torch.Tensor, r: int, scaling: float, options: LoraGAConfig, first_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-GA's ``A (r, in)`` and ``B (out, r)`` in float32 (see the module docstring for the formulas).

    Args:
        grad: The weight's mean gradient ``(out, in)``.
        weight: The base weight ``(out, in)`` (read by ``scale="weight_svd"`` only).
        r: The rank; ``2r`` must not exceed ``min(out, in)``.
        scaling: The LoRA scaling ``s``.
        options: The direction and scale rules.
        first_dim: ``n`` of the ``"stable"`` scale.

    Raises:
        ConfigError: ``2r > min(out, in)``: the gradient has too few singular directions to split.
    """
    grad = grad.float()
    if 2 * r > min(grad.shape):
        raise _rank_error(r, tuple(grad.shape))
    U, S, V = torch.svd_lowrank(grad, q=min(4 * r, min(grad.shape)), niter=4)
    pick_A, pick_B = split_indices(options.direction, r)
    A = V[:, pick_A].T
    S_B = S[pick_B]
    B = U[:, pick_B] * S_B
    if options.scale == "stable":
        B = B * (first_dim**0.25 / options.stable_gamma**0.5)
    elif options.scale == "weight_svd":
        _, weight_S, _ = torch.svd_lowrank(weight.float(), q=r, niter=4)
        if S_B[0] > 0:
            B = B * (weight_S[0] / S_B[0])
    elif options.scale == "gd_scale":
        A, B = A / scaling, B / scaling
    return A.contiguous(), B.contiguous()


def replay_factor_draws(in_features: int, out_features: int, r: int) -> None:
    """Draw what the reference's ``nn.Linear(in, r)`` and ``nn.Linear(r, out)`` constructors draw (uniform ``A`` and
    ``B``, default dtype, CPU), so the random state matches at the SVD (``lora_bias`` is refused with LoRA-GA)."""
    torch.empty(r, in_features).uniform_()
    torch.empty(out_features, r).uniform_()


def init_lora_ga_(layer: Any, adapter: str, spec: LoraLayerSpec) -> bool:
    """Initialise ``adapter`` of the LoRA ``Linear`` layer ``layer`` from the gradient that ``preprocess_loraga``
    attached to its base layer, rewrite the base weight to ``W - s B A`` and drop the gradient.

    Returns:
        ``False`` (nothing done) when the base layer holds no gradient: the caller initialises as ``True`` does.

    Raises:
        ConfigError: the gradient is there but ``lora_ga_config`` is not set, or the rank is too large.
        UnsupportedError: the layer's factors are not plain matrices.
    """
    base = layer.get_base_layer()
    grad = getattr(base, GRAD_ATTR, None)
    if grad is None:
        return False
    options = spec.init_options
    if not isinstance(options, LoraGAConfig):
        raise _missing_options()
    A, B = layer.factor_tensors(adapter)
    require_matrix_factors(A, spec.r, "lora_ga", "Linear and Conv1D")
    replay_factor_draws(layer.in_features, layer.out_features, spec.r)
    stored = base.weight
    to_matrix = (lambda t: t.T) if layer.fan_in_fan_out else (lambda t: t)
    new_A, new_B = lora_ga_factors(
        to_matrix(grad), to_matrix(stored.detach()), spec.r, spec.scaling, options, stored.shape[0]
    )
    dtype = stored.dtype
    new_A, new_B = new_A.to(dtype), new_B.to(dtype)
    write_factors_(A, B, new_A, new_B, dtype)
    offset = to_matrix(spec.scaling * (new_B.float() @ new_A.float()))
    update_weight(base, lambda w: w.copy_((w.float() - offset).to(w.dtype)))
    delattr(base, GRAD_ATTR)
    return True
