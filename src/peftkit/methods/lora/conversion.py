"""Convert another additive adapter (LoHa, LoKr, VeRA, or LoRA at a new rank) to a LoRA adapter.

An adapter whose layers add a weight update ``ΔW (out, in)`` to a Linear's weight can be approximated by LoRA:
the truncated SVD ``ΔW ≈ U_k S_k V_kᵀ`` gives ``B = U_k S_k (out, k)`` and ``A = V_kᵀ (k, in)``, the best rank-``k``
approximation in the Frobenius norm (Eckart-Young). The scaling is folded into the factors, so the LoRA config has
``lora_alpha == r`` (scaling 1). ``k`` is either fixed, or the smallest rank whose singular values ``s_i`` hold a
given fraction of ``‖ΔW‖_F² = Σ s_i²`` (its energy). This is PEFT's ``peft.tuners.lora.conversion``: the same
config, the same file keys, the same factors.

Which layers can be converted is each layer's :meth:`~peftkit.layers.base.AdapterLayer.supports_lora_conversion`:
Linear layers of LoRA (not DoRA, KaSA, aLoRA or Arrow, whose output is not ``base + ΔW x``), LoHa, LoKr and VeRA.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type stubs

from peftkit.config import PromptLearningConfig
from peftkit.errors import ArgumentTypeError, ConfigError
from peftkit.io.keys import MODEL_PREFIX
from peftkit.io.save import write_adapter
from peftkit.layers.base import AdapterLayer
from peftkit.layers.modules_to_save import ModulesToSaveWrapper
from peftkit.methods.lora.config import LoraConfig
from peftkit.types import PeftType

__all__ = ["convert_to_lora", "save_as_lora"]


def energy_rank(singular_values: torch.Tensor, threshold: float) -> int:
    """The smallest ``k`` with ``Σ_{i<k} s_i² >= threshold · Σ s_i²`` for ``singular_values (n,)`` sorted in
    descending order (``threshold`` in ``(0, 1]``)."""
    energy = singular_values.double().square().cumsum(0)
    return int(torch.searchsorted(energy, threshold * energy[-1]).item()) + 1


@torch.no_grad()
def lora_factors(layer: AdapterLayer, rank: int | float, adapter: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(A (k, in), B (out, k), k)`` with ``B A`` the best rank-``k`` approximation of ``adapter``'s ``ΔW`` in
    ``layer`` (scaling included), in ``ΔW``'s dtype; ``rank`` an int (``k``) or an energy threshold (a float).

    Raises:
        ConfigError: ``k`` exceeds ``min(out, in)``.
    """
    delta: torch.Tensor = cast(Any, layer).delta_weight(adapter)  # every convertible layer has it
    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)  # no SVD in half precision
    k = rank if isinstance(rank, int) else energy_rank(S, rank)
    if k > S.shape[0]:
        raise ConfigError(
            f"The chosen rank {k} is larger than the weight shape ({S.shape[0]}) of a {type(layer).__name__} layer; "
            "choose a lower rank."
        )
    B, A = (U[:, :k] * S[:k]).to(delta.dtype), Vh[:k].to(delta.dtype)
    if getattr(layer, "fan_in_fan_out", False):  # ΔW was (in, out), as a Conv1D base stores its weight
        A, B = B.T, A.T
    return A.contiguous(), B.contiguous(), k


def supports_lora_conversion(model: nn.Module, adapter_name: str = "default") -> bool:
    """Whether every adapter layer of ``model`` can convert ``adapter_name`` (PEFT's ``supports_lora_conversion``
    of a ``PeftModel`` or tuner model); ``False`` for prompt-learning adapters."""
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if isinstance(config, PromptLearningConfig):
        return False
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    return all(layer.supports_lora_conversion(adapter_name) for layer in layers)


def _check_rank(rank: int | float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)):
        raise ConfigError(f"rank must be an int (the LoRA rank) or a float (an energy threshold), not {rank!r}.")
    if isinstance(rank, float) and not 0 < rank <= 1:
        raise ConfigError(
            f"If rank is a float, it is interpreted as a threshold. It must be between 0 and 1 but got {rank}."
        )
    if isinstance(rank, int) and rank <= 0:
        raise ConfigError(
            f"Passing a rank of {rank} doesn't make sense: pass a positive rank or a threshold in (0, 1]."
        )


def _convertible_layers(model: nn.Module, adapter: str) -> list[tuple[str, AdapterLayer]]:
    """The adapter layers of ``model`` that hold ``adapter``, by name; refuses models with none, or with one that
    cannot be converted (``TypeError``, as PEFT)."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer) and m.holds(adapter)]
    unsupported = sorted({repr(type(m)) for _, m in layers if not m.supports_lora_conversion(adapter)})
    if unsupported:
        raise ArgumentTypeError(
            f"Some module types on this model do not support LoRA conversion: {', '.join(unsupported)}. Only Linear "
            "layers of additive adapters convert (LoRA without DoRA or a non-additive variant, LoHa, LoKr, VeRA)."
        )
    if not layers:
        raise ArgumentTypeError(
            f"Could not detect any layer that supports LoRA conversion with an adapter named {adapter!r}: the model "
            "holds no adapter layer of it (prompt-learning adapters have none)."
        )
    return layers


def _new_config(source: Any, rank: int | float) -> LoraConfig:
    """The LoRA config of the converted adapter, targeting what ``source`` (the adapter's config, or ``None``)
    targets; ``r == lora_alpha`` (a float ``rank``: 1, each layer's rank in ``rank_pattern``)."""
    r = rank if isinstance(rank, int) else 1
    kwargs: dict[str, Any] = {"rank_pattern": {}, "alpha_pattern": {}}
    if source is None:
        return LoraConfig(r=r, lora_alpha=r, target_modules=set(), **kwargs)
    bias = getattr(source, "bias", "none")
    if bias != "none" or getattr(source, "lora_bias", False):
        raise ConfigError(
            f"The adapter's config sets bias={bias!r} (or lora_bias): a trained bias has no place in a LoRA "
            "adapter's A and B, so this adapter cannot be converted."
        )
    if source.peft_type == PeftType("LORA"):
        warnings.warn(
            "Converting a PEFT adapter to LoRA that is already a LoRA adapter: useful only to change its rank.",
            UserWarning,
            stacklevel=3,
        )
    kwargs["base_model_name_or_path"] = source.base_model_name_or_path
    kwargs["exclude_modules"] = copy.copy(getattr(source, "exclude_modules", None))
    if hasattr(source, "layers_pattern"):
        kwargs.update(layers_pattern=source.layers_pattern, layers_to_transform=source.layers_to_transform)
    if getattr(source, "modules_to_save", None):
        kwargs["modules_to_save"] = copy.copy(source.modules_to_save)
    return LoraConfig(r=r, lora_alpha=r, target_modules=copy.copy(source.target_modules), **kwargs)


def _modules_to_save_state(model: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """``adapter``'s trained copies of ``modules_to_save`` under their file keys (``<module>.<tensor>``)."""
    state = {}
    for name, wrapper in model.named_modules():
        if isinstance(wrapper, ModulesToSaveWrapper) and adapter in wrapper.modules_to_save:
            for key, tensor in wrapper.modules_to_save[adapter].state_dict().items():
                state[f"{name}.{key}"] = tensor.detach()
    return state


def convert_to_lora(
    model: nn.Module,
    rank: int | float,
    adapter_name: str = "default",
    progressbar: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """A LoRA config and state dict (PEFT's file keys: ``<module>.lora_A.weight (k, in)``, ``.lora_B.weight (out,
    k)``) approximating ``adapter_name`` of ``model`` (a ``PeftModel``, or a model with adapters injected).

    Args:
        rank: The rank ``k`` of every layer (an int), or an energy threshold in ``(0, 1]`` (a float): each layer
            gets the smallest rank holding that fraction of ``Σ s_i²``, recorded in ``rank_pattern`` /
            ``alpha_pattern``.
        progressbar: Show a progress bar over the layers.
        compile_kwargs: ``torch.compile`` the per-layer conversion with these keyword arguments.

    Returns:
        ``(config, state_dict)``; load them with ``get_peft_model(base, config)`` and
        ``set_peft_model_state_dict``. ``modules_to_save`` of the adapter are carried over.

    Raises:
        TypeError: No layer holds ``adapter_name``, or one that does cannot be converted (a convolution, IA3, DoRA...).
        ConfigError: A bad ``rank``, a rank above a layer's ``min(out, in)``, or an adapter with a trained bias.
    """
    _check_rank(rank)
    layers = _convertible_layers(model, adapter_name)
    source = getattr(model, "peft_config", {}).get(adapter_name)
    config = _new_config(source, rank)
    factors: Callable[..., tuple[torch.Tensor, torch.Tensor, int]] = lora_factors
    if compile_kwargs is not None:
        factors = torch.compile(lora_factors, **compile_kwargs)
    state: dict[str, torch.Tensor] = {}
    for name, layer in tqdm(layers, disable=not progressbar, desc="Converting to LoRA"):
        A, B, k = factors(layer, rank, adapter_name)
        target = name.removeprefix(MODEL_PREFIX)
        patterned = isinstance(rank, float) or k != rank or isinstance(config.target_modules, str)
        if patterned:  # as PEFT: a rank that r does not give, or targets that are a regex
            config.rank_pattern[target] = config.alpha_pattern[target] = k
        if not patterned or source is None:  # without the source's targets nothing else would target it
            cast(set, config.target_modules).add(target)
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = A, B
    state.update(_modules_to_save_state(model, adapter_name))
    return config, state


def save_as_lora(
    path: str | os.PathLike[str],
    model: nn.Module,
    rank: int | float,
    adapter_name: str = "default",
    progressbar: bool = False,
    compile_kwargs: dict[str, Any] | None = None,
) -> None:
    """:func:`convert_to_lora`, written to directory ``path`` as a PEFT adapter (``adapter_model.safetensors`` and
    ``adapter_config.json``) that ``PeftModel.from_pretrained`` loads. Arguments and errors as there; nothing is
    written when the conversion fails."""
    config, state = convert_to_lora(model, rank, adapter_name, progressbar, compile_kwargs)
    write_adapter(path, config, state)
