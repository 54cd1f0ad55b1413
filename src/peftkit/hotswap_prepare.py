"""Preparing LoRA adapters for in-place hot-swaps (see :mod:`peftkit.hotswap`): where the adapters and their
configs live, scalings held as 0-dim tensors, ranks zero-padded to a fixed maximum, and the config that describes
an adapter as the model holds it.

The rank dimension of a factor holds ``E`` blocks when one layer carries a LoRA per expert (LoRA on a fused
expert parameter, :class:`~peftkit.methods.lora.param.ParamWrapper`; ``E = 1`` for every other layer):
``A (r E, in)`` is expert-major (row ``e r + j``, viewed ``(E, r, in)``) and ``B (out, r E)`` rank-major
(column ``j E + e``, viewed ``(out, r, E)``). Padding to rank ``R`` and writing a smaller rank act on the ``r``
axis of those views, so every expert keeps ``B_e A_e``.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import HotswapError
from peftkit.functional import iter_adapter_modules
from peftkit.layers.walk import AdapterModule
from peftkit.locking import exclusive
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.method import LORA
from peftkit.methods.lora.param import ParamWrapper
from peftkit.methods.lora.scaling import alpha_for_scaling
from peftkit.targeting import pattern_value

CheckCompiled = Literal["error", "warn", "ignore"]


# -- where the adapters and their configs live ---------------------------------------------------------
def resolve_adapter_model(model: Any) -> tuple[nn.Module, dict[str, PeftConfig] | None]:
    """``(inner model, adapter configs)`` for a PeftModel, an in-place transformers model with adapters, or a
    model from ``inject_adapter_in_model``; compiled wrappers are looked through."""
    model = getattr(model, "_orig_mod", model)
    if getattr(type(model), "get_base_model", None) is not None and "base_model" in getattr(model, "_modules", {}):
        return model.get_base_model(), model.peft_config
    for attr in ("peft_config", "_peftkit_configs"):
        configs = model.__dict__.get(attr)
        if isinstance(configs, dict):
            return model, configs
    return model, None


#: Layer classes of LoRA proper (AdaLoRA's layers subclass LoraLayer but hold A, E, B), on modules and parameters.
_LORA_LAYER_TYPES = frozenset({*LORA.layer_table.values(), ParamWrapper})


def is_plain_lora(config: PeftConfig) -> bool:
    """LoRA proper: AdaLoRA's config subclasses LoraConfig but its layers have another shape."""
    return isinstance(config, LoraConfig) and config.peft_type == LORA.peft_type


def lora_layers(
    inner: nn.Module, adapter: str | None = None, modules: Iterable[tuple[str, AdapterModule]] | None = None
) -> list[tuple[str, LoraLayer]]:
    """``(name, layer)`` of every LoRA-proper layer of ``inner`` (holding ``adapter``, when given); ``modules``:
    ``iter_adapter_modules(inner)`` when the caller has walked it already."""
    return [
        (name, module)  # type: ignore[misc]  # the type check below keeps LoRA layers only
        for name, module in (iter_adapter_modules(inner) if modules is None else modules)
        if type(module) in _LORA_LAYER_TYPES and (adapter is None or module.holds(adapter))
    ]


def expert_count(layer: LoraLayer) -> int:
    """How many per-expert LoRAs share ``layer``'s rank dimension (``E`` for LoRA on an expert parameter, else 1)."""
    return layer.num_experts if isinstance(layer, ParamWrapper) else 1


def pattern_name(name: str, layer: LoraLayer) -> str:
    """The name ``rank_pattern`` / ``alpha_pattern`` are matched against for the layer at ``name``: the module's
    own; for LoRA on a parameter ``<module>.<parameter>`` (nested wrappers' ``.base_layer`` removed), as injected."""
    if not isinstance(layer, ParamWrapper):
        return name
    while name.endswith(".base_layer"):
        name = name.removesuffix(".base_layer")
    return f"{name}.{layer.parameter_name}" if name else layer.parameter_name


def rank_blocks(tensor: torch.Tensor, which: str, experts: int) -> torch.Tensor:
    """A view of factor ``which`` (``"A"`` or ``"B"``) with the rank on axis 1: ``A (r E, in, ...) -> (E, r, in,
    ...)``, ``B (out, r E, ...) -> (out, r, E, ...)`` (see the module docstring)."""
    if which == "A":
        return tensor.view(experts, tensor.shape[0] // experts, *tensor.shape[1:])
    return tensor.view(tensor.shape[0], tensor.shape[1] // experts, experts, *tensor.shape[2:])


def write_rank_block(dest: torch.Tensor, src: torch.Tensor, which: str, experts: int) -> None:
    """Zero ``dest`` and copy factor ``src`` of a rank ``<=`` dest's into its leading rank block, per expert,
    so that ``B_dest A_dest = B_src A_src`` for every expert once both factors are written."""
    view, block = rank_blocks(dest, which, experts), rank_blocks(src, which, experts)
    with torch.no_grad():
        view.zero_()
        view.narrow(1, 0, block.shape[1]).copy_(block.to(device=dest.device, dtype=dest.dtype))


def _check_compiled(model: nn.Module, check_compiled: str) -> None:
    if check_compiled not in ("error", "warn", "ignore"):
        raise HotswapError(f"check_compiled must be 'error', 'warn' or 'ignore', got {check_compiled!r}.")
    compiled = hasattr(model, "_orig_mod") or getattr(model, "_compiled_call_impl", None) is not None
    if not compiled or check_compiled == "ignore":
        return
    message = "The model is already compiled; prepare it for hot-swapping before torch.compile, or it recompiles."
    if check_compiled == "error":
        raise HotswapError(message)
    warnings.warn(message, stacklevel=3)


# -- preparation: scalings as tensors, ranks padded -------------------------------------------------------
def hold_scaling_as_tensor(layer: LoraLayer, adapter: str) -> None:
    """Replace the float scaling of ``adapter`` by a 0-dim tensor (on the adapter's device)."""
    current = layer.scaling[adapter]
    if not torch.is_tensor(current):
        device = layer.factor_tensors(adapter)[0].device
        layer.scaling[adapter] = torch.tensor(float(current), device=device)  # type: ignore[assignment]  # a tensor scaling (compile-friendly) where LoRA keeps floats


def set_scaling(layer: LoraLayer, adapter: str, value: float) -> None:
    """Set the scaling in place when it is a tensor (compiled graphs keep reading the same tensor)."""
    current = layer.scaling[adapter]
    if torch.is_tensor(current):
        with torch.no_grad():
            current.fill_(value)
    else:
        layer.scaling[adapter] = value


def _set_factor(layer: LoraLayer, adapter: str, which: str, tensor: torch.Tensor, requires_grad: bool) -> None:
    """Install ``tensor`` as factor ``which`` (``"A"`` or ``"B"``) of ``adapter``, keeping module sizes truthful."""
    param = nn.Parameter(tensor, requires_grad=requires_grad)
    container = getattr(layer, f"lora_{which}")
    if adapter not in container:
        getattr(layer, f"lora_embedding_{which}")[adapter] = param
        return
    module = container[adapter]
    module.weight = param
    rank = tensor.shape[0] if which == "A" else tensor.shape[1] * layer.rank_groups
    size_attr = ("out_features", "out_channels") if which == "A" else ("in_features", "in_channels")
    for attr in size_attr:
        if hasattr(module, attr):
            setattr(module, attr, rank)


def pad_rank(layer: LoraLayer, adapter: str, target_rank: int, use_rslora: bool = False) -> None:
    """Zero-pad ``adapter``'s factors to rank ``target_rank`` (``A``: rows, ``B``: columns, per expert for LoRA
    on an expert parameter, per group for a grouped convolution); output unchanged.

    ``layer.r`` becomes ``target_rank`` (it always equals the factors' rank dimension) and ``lora_alpha`` the
    value that gives the unchanged scaling at that rank.
    """
    A, B = layer.factor_tensors(adapter)
    experts = expert_count(layer)
    rank = A.shape[0] // experts
    if rank > target_rank:
        raise HotswapError(
            f"Adapter {adapter!r} already has rank {rank} in a layer, above target_rank={target_rank}; "
            "pass a target_rank at least as large as every adapter's rank."
        )
    groups = layer.rank_groups  # a grouped convolution: A's rows per group, B's columns already per group
    if rank < target_rank:
        new_A = A.new_zeros((target_rank * experts, *A.shape[1:]))
        new_B = B.new_zeros((B.shape[0], target_rank * experts // groups, *B.shape[2:]))
        write_rank_block(new_A, A, "A", experts * groups)
        write_rank_block(new_B, B, "B", experts)
        _set_factor(layer, adapter, "A", new_A, A.requires_grad)
        _set_factor(layer, adapter, "B", new_B, B.requires_grad)
    scaling = float(layer.scaling[adapter])
    layer.r[adapter] = target_rank
    layer.lora_alpha[adapter] = alpha_for_scaling(scaling, target_rank, use_rslora)
    forget_cached_stacks(layer)


def check_rank_groups(layers: list[tuple[str, LoraLayer]], target_rank: int) -> None:
    """Raise :class:`HotswapError` (before anything changes) when ``target_rank`` is not a multiple of a grouped
    convolution's ``groups`` (its ``B`` holds ``rank / groups`` columns)."""
    for name, layer in layers:
        if target_rank % layer.rank_groups:
            raise HotswapError(
                f"target_rank={target_rank} cannot be split over the {layer.rank_groups} groups of the convolution "
                f"{name}; pick a multiple of {layer.rank_groups}."
            )


def check_variant_ranks(layers: list[tuple[str, LoraLayer]], adapter: str, target_rank: int) -> None:
    """Raise :class:`HotswapError` (before anything changes) when an adapter of a LoRA variant would need padding:
    zero rows and columns appended to a variant's factors (BD-LoRA's packed blocks) would not keep its output."""
    for name, layer in layers:
        variant = layer.lora_variant.get(adapter)
        if variant is not None and layer.r[adapter] != target_rank:
            raise HotswapError(
                f"{name}: adapter {adapter!r} is a {variant.name} adapter of rank {layer.r[adapter]}, which cannot be "
                f"padded to rank {target_rank}; hot-swap {variant.name} adapters of the same rank only."
            )


def forget_cached_stacks(layer: LoraLayer) -> None:
    """Drop the layer's stacked multi-adapter copies (rebuilt from the new weights on the next use)."""
    if hasattr(layer, "_stack_cache"):
        layer.__dict__["_stack_cache"] = None


def config_as_held(config: PeftConfig, held: Mapping[str, tuple[int, float]]) -> PeftConfig:
    """A copy of LoRA ``config`` that describes the adapter as the model holds it.

    Args:
        held: ``layer name -> (rank of the held factors, scaling)``, names as the patterns match them
            (:func:`pattern_name`).

    Returns:
        ``config`` itself (copied) when every layer holds the config's own rank; otherwise a config with
        ``r`` / ``rank_pattern`` set to the held ranks and ``lora_alpha`` / ``alpha_pattern`` chosen so that
        ``alpha_l / r_l`` (``/ sqrt(r_l)`` for rsLoRA) is each layer's scaling.
    """
    new = copy.deepcopy(config)
    if not isinstance(new, LoraConfig) or not held:
        return new
    if all(pattern_value(name, config.rank_pattern, config.r) == rank for name, (rank, _) in held.items()):  # type: ignore[attr-defined]  # a LoraConfig (checked above)
        return new
    ranks = {name: rank for name, (rank, _) in held.items()}
    alphas = {name: alpha_for_scaling(scaling, rank, new.use_rslora) for name, (rank, scaling) in held.items()}
    new.r = Counter(ranks.values()).most_common(1)[0][0]
    new.lora_alpha = Counter(alphas.values()).most_common(1)[0][0]
    new.rank_pattern = {re.escape(n): r for n, r in ranks.items() if r != new.r}
    new.alpha_pattern = {re.escape(n): a for n, a in alphas.items() if a != new.lora_alpha}
    return new


@exclusive
def prepare_adapter(
    inner: nn.Module, configs: dict[str, PeftConfig] | None, adapter: str, target_rank: int | None
) -> bool:
    """Hold ``adapter``'s scalings as tensors and pad it to ``target_rank``; ``False`` if no LoRA layer has it."""
    layers = lora_layers(inner, adapter)
    config = (configs or {}).get(adapter)
    rslora = bool(getattr(config, "use_rslora", False))
    if target_rank is not None:
        check_rank_groups(layers, target_rank)
        check_variant_ranks(layers, adapter, target_rank)
    for _, layer in layers:
        hold_scaling_as_tensor(layer, adapter)
        if target_rank is not None:
            pad_rank(layer, adapter, target_rank, use_rslora=rslora)
    if config is not None and layers:
        held = {pattern_name(n, layer): (layer.r[adapter], float(layer.scaling[adapter])) for n, layer in layers}
        configs[adapter] = config_as_held(config, held)  # type: ignore[index]  # configs is a dict whenever adapters are held
    return bool(layers)


@exclusive
def prepare_model_for_compiled_hotswap(
    model: nn.Module,
    *,
    target_rank: int | None = None,
    config: PeftConfig | dict[str, PeftConfig] | None = None,
    check_compiled: CheckCompiled = "error",
) -> None:
    """Prepare a model with a loaded LoRA adapter for later in-place swaps (call before ``torch.compile``).

    Every LoRA adapter's scalings become tensors and, with ``target_rank``, its factors are zero-padded to
    that rank, so adapters of any rank ``<= target_rank`` and any alpha can be swapped in without
    recompiling. The model's own adapter configs are rewritten to describe the padded adapters.

    Args:
        model: A PeftModel, or a transformers model with adapters added in place.
        target_rank: The largest rank among the adapters that will be swapped in.
        config: Configs (one, or a dict) whose ``r`` and ``rank_pattern`` are set to ``target_rank`` (PEFT's
            behaviour for configs passed here).
        check_compiled: What to do when the model is already compiled: ``"error"``, ``"warn"``, ``"ignore"``.

    Raises:
        HotswapError: The model is compiled (with ``"error"``), has no LoRA layer, or an adapter's rank
            exceeds ``target_rank``.
    """
    _check_compiled(model, check_compiled)
    inner, configs = resolve_adapter_model(model)
    names = sorted({n for _, layer in lora_layers(inner) for n in layer.adapter_names()})
    if not names:
        raise HotswapError("No LoRA adapter found on the model; load the first adapter, then prepare, then compile.")
    for name in names:
        prepare_adapter(inner, configs, name, target_rank)
    if target_rank is None or config is None:
        return
    for each in config.values() if isinstance(config, dict) else [config]:
        each.r = target_rank  # type: ignore[attr-defined]  # hot-swap holds LoRA adapters only (LoraConfig has r)
        pattern = getattr(each, "rank_pattern", None) or {}
        for key in pattern:
            pattern[key] = target_rank
