"""Hot-swapping LoRA adapters in place: new weights into an existing adapter slot, no new modules.

A swap keeps every module, parameter object and tensor shape, so a ``torch.compile``-d model runs the next
forward without recompiling. Two preparations make that hold for adapters of any rank and alpha:

* **ranks padded to a fixed maximum** ``R``: ``A (r, in) -> [A; 0] (R, in)`` and ``B (out, r) -> [B, 0]
  (out, R)``, so that ``B_pad @ A_pad = B @ A`` and an adapter of rank ``r' <= R`` is written into the
  top-left block with zeros elsewhere;
* **scalings held as 0-dim tensors**, updated with ``fill_`` so a new ``alpha`` takes effect without a new
  Python constant in the traced graph. The scaling is recomputed from the *new* adapter's config for every
  layer (``alpha / r`` or ``alpha / sqrt(r)``, after ``rank_pattern`` / ``alpha_pattern``); PEFT's reference
  keeps a stale one in some paths.

The adapter config registered on the model is rewritten to describe the adapter as held (rank ``R``, each
layer's alpha scaled by ``R / r``), so that saving after a swap writes a file that reloads to the same outputs.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, HotswapError, UnsupportedError
from peftkit.functional import iter_adapter_modules
from peftkit.io.keys import strip_prefix
from peftkit.io.load import read_weights, split_hub_kwargs
from peftkit.io.state import adapter_tensors
from peftkit.locking import exclusive
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.method import LORA
from peftkit.methods.lora.scaling import alpha_for_scaling
from peftkit.registry import method_of

CheckCompiled = Literal["error", "warn", "ignore"]

__all__ = ["hotswap_adapter", "prepare_model_for_compiled_hotswap", "swap_adapter_weights"]


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


#: Layer classes of LoRA proper (AdaLoRA's layers subclass LoraLayer but hold A, E, B).
_LORA_LAYER_TYPES = frozenset(LORA.layer_table.values())


def _is_plain_lora(config: PeftConfig) -> bool:
    """LoRA proper: AdaLoRA's config subclasses LoraConfig but its layers have another shape."""
    return isinstance(config, LoraConfig) and config.peft_type == LORA.peft_type


def _lora_layers(inner: nn.Module, adapter: str | None = None) -> list[tuple[str, LoraLayer]]:
    return [
        (name, module)  # type: ignore[misc]  # the type check below keeps LoRA layers only
        for name, module in iter_adapter_modules(inner)
        if type(module) in _LORA_LAYER_TYPES and (adapter is None or module.holds(adapter))
    ]


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
    rank = tensor.shape[0] if which == "A" else tensor.shape[1]
    size_attr = ("out_features", "out_channels") if which == "A" else ("in_features", "in_channels")
    for attr in size_attr:
        if hasattr(module, attr):
            setattr(module, attr, rank)


def pad_rank(layer: LoraLayer, adapter: str, target_rank: int, use_rslora: bool = False) -> None:
    """Zero-pad ``adapter``'s factors to rank ``target_rank`` (``A``: rows, ``B``: columns); output unchanged.

    ``layer.r`` becomes ``target_rank`` (it always equals the factors' rank dimension) and ``lora_alpha`` the
    value that gives the unchanged scaling at that rank.
    """
    A, B = layer.factor_tensors(adapter)
    rank = A.shape[0]
    if rank > target_rank:
        raise HotswapError(
            f"Adapter {adapter!r} already has rank {rank} in a layer, above target_rank={target_rank}; "
            "pass a target_rank at least as large as every adapter's rank."
        )
    if rank < target_rank:
        with torch.no_grad():
            new_A = A.new_zeros((target_rank, *A.shape[1:]))
            new_A[:rank] = A
            new_B = B.new_zeros((B.shape[0], target_rank, *B.shape[2:]))
            new_B[:, :rank] = B
        _set_factor(layer, adapter, "A", new_A, A.requires_grad)
        _set_factor(layer, adapter, "B", new_B, B.requires_grad)
    scaling = float(layer.scaling[adapter])
    layer.r[adapter] = target_rank
    layer.lora_alpha[adapter] = alpha_for_scaling(scaling, target_rank, use_rslora)
    _forget_cached_stacks(layer)


def _forget_cached_stacks(layer: LoraLayer) -> None:
    if hasattr(layer, "_stack_cache"):
        layer.__dict__["_stack_cache"] = None


#: Stands for a layer's base module where only the layer's name matters to the per-layer facts.
_ANY_MODULE = nn.Identity()


def config_as_held(config: PeftConfig, held: Mapping[str, tuple[int, float]]) -> PeftConfig:
    """A copy of LoRA ``config`` that describes the adapter as the model holds it.

    Args:
        held: ``layer name -> (rank of the held factors, scaling)``.

    Returns:
        ``config`` itself (copied) when every layer holds the config's own rank; otherwise a config with
        ``r`` / ``rank_pattern`` set to the held ranks and ``lora_alpha`` / ``alpha_pattern`` chosen so that
        ``alpha_l / r_l`` (``/ sqrt(r_l)`` for rsLoRA) is each layer's scaling.
    """
    new = copy.deepcopy(config)
    if not isinstance(new, LoraConfig) or not held:
        return new
    facts = method_of(config).layer_facts
    if all(facts(config, name, _ANY_MODULE).r == rank for name, (rank, _) in held.items()):  # type: ignore[misc]  # layer methods always have layer_facts (prompt methods never get here)
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
    layers = _lora_layers(inner, adapter)
    config = (configs or {}).get(adapter)
    rslora = bool(getattr(config, "use_rslora", False))
    for _, layer in layers:
        hold_scaling_as_tensor(layer, adapter)
        if target_rank is not None:
            pad_rank(layer, adapter, target_rank, use_rslora=rslora)
    if config is not None and layers:
        held = {name: (layer.r[adapter], float(layer.scaling[adapter])) for name, layer in layers}
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
    names = sorted({n for _, layer in _lora_layers(inner) for n in layer.adapter_names()})
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


# -- swapping ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Copy:
    """One tensor of the swap: the live tensor, the new value, and the rank dimension (``None``: none)."""

    live: torch.Tensor
    new: torch.Tensor
    rank_dim: int | None


def _rank_dim(key: str) -> int | None:
    """Which dimension of an on-disk LoRA key is the rank (A: rows, B: columns), if any."""
    parts = key.split(".")
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return 0 if parts[-1].endswith("A") else 1
    if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return 0 if parts[-2] == "lora_A" else 1
    return None


def _plan_copies(inner: nn.Module, adapter: str, old: PeftConfig, state: Mapping[str, torch.Tensor]) -> list[_Copy]:
    """Check that ``state`` fits the slot of ``adapter`` (same keys, ranks within capacity) and pair tensors."""
    expected = adapter_tensors(inner, adapter, old, embedding_layers=None)
    missing = sorted(k for k, v in expected.items() if v.required and k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        raise HotswapError(
            f"Cannot hot-swap into adapter {adapter!r}: the new adapter targets other modules (missing keys: "
            f"{missing[:5]}, unexpected keys: {unexpected[:5]}). Hot-swapping needs the same target_modules; "
            "load it as a separate adapter instead (hotswap=False, another adapter_name)."
        )
    copies = []
    for key, value in state.items():
        live, dim = expected[key].tensor, _rank_dim(key)
        if live.is_floating_point() and not value.is_floating_point():
            raise HotswapError(f"Cannot hot-swap {key}: the file holds a {value.dtype} tensor where weights belong.")
        fits = value.shape == live.shape or (
            dim is not None
            and value.dim() == live.dim()
            and value.shape[dim] <= live.shape[dim]
            and all(a == b for i, (a, b) in enumerate(zip(value.shape, live.shape)) if i != dim)
        )
        if not fits:
            capacity = f" (the slot holds rank {live.shape[dim]})" if dim is not None else ""
            raise HotswapError(
                f"Cannot hot-swap {key}: new shape {tuple(value.shape)} vs {tuple(live.shape)} in the model"
                f"{capacity}. For ranks above the first adapter's, call model.enable_peft_hotswap(target_rank=R) "
                "(or prepare_model_for_compiled_hotswap(model, target_rank=R)) before loading the first adapter."
            )
        copies.append(_Copy(live, value, dim))
    return copies


def _new_layer_facts(
    layers: list[tuple[str, LoraLayer]], adapter: str, config: PeftConfig, state: Mapping[str, torch.Tensor]
) -> dict:
    """``layer name -> (layer, facts)`` of the new adapter; checks that the file's ranks match its config."""
    facts_of = method_of(config).layer_facts
    out = {}
    for name, layer in layers:
        facts = facts_of(config, name, layer.get_base_layer())  # type: ignore[misc]  # layer methods always have layer_facts (prompt methods never get here)
        a_key = f"{name}.lora_A.weight" if adapter in layer.lora_A else f"{name}.lora_embedding_A"
        if a_key in state and state[a_key].shape[0] != facts.r:
            raise HotswapError(
                f"{a_key} has rank {state[a_key].shape[0]} but the adapter's config gives r={facts.r} for {name}; "
                "the adapter_config.json does not match its weights."
            )
        out[name] = (layer, facts)
    return out


@exclusive
def swap_adapter_weights(
    model: nn.Module, adapter_name: str, config: PeftConfig, state: Mapping[str, torch.Tensor]
) -> None:
    """Replace the weights and scalings of loaded LoRA adapter ``adapter_name`` with a new adapter, in place.

    Every check runs before anything changes: same target modules (same keys), each rank within the slot's
    capacity (the first adapter's rank, or the ``target_rank`` it was padded to), not merged. Ranks below
    the capacity are written into the leading block, zeros elsewhere, so ``B' A'`` equals the new adapter's.

    Args:
        model: PeftModel or in-place transformers model holding ``adapter_name``.
        config: The new adapter's config (its ``r``, ``lora_alpha``, patterns and rsLoRA give the scalings).
        state: The new adapter's tensors with on-disk keys (``base_model.model.`` prefix optional).

    Raises:
        AdapterNameError: no such adapter. HotswapError: the new adapter does not fit the slot.
    """
    inner, configs = resolve_adapter_model(model)
    if not configs or adapter_name not in configs:
        raise AdapterNameError(
            f"Cannot hot-swap into adapter {adapter_name!r}: no such adapter is loaded "
            f"(present: {sorted(configs or {})}). Load it first without hotswap."
        )
    old = configs[adapter_name]
    if not _is_plain_lora(config) or not _is_plain_lora(old):
        raise UnsupportedError("Hot-swapping is implemented for LoRA adapters only (not AdaLoRA, IA3 or prompts).")
    holders = _lora_layers(inner, adapter_name)
    if any(adapter_name in layer.merged_adapters for _, layer in holders):
        raise HotswapError(f"Adapter {adapter_name!r} is merged into the base weights; unmerge it before swapping.")
    state = {strip_prefix(k): v for k, v in state.items()}
    copies = _plan_copies(inner, adapter_name, old, state)
    layers = _new_layer_facts(holders, adapter_name, config, state)
    with torch.no_grad():
        for item in copies:
            new = item.new.to(device=item.live.device, dtype=item.live.dtype)
            if item.rank_dim is None or new.shape == item.live.shape:
                item.live.copy_(new)
            else:
                item.live.zero_()
                item.live.narrow(item.rank_dim, 0, new.shape[item.rank_dim]).copy_(new)
    held = {}
    for name, (layer, facts) in layers.items():
        _apply_layer_settings(layer, adapter_name, facts)
        held[name] = (layer.r[adapter_name], facts.scaling)
    new_config = config_as_held(config, held)
    new_config.inference_mode = old.inference_mode
    configs[adapter_name] = new_config


def _apply_layer_settings(layer: LoraLayer, adapter: str, facts: Any) -> None:
    """Scaling (in place when a tensor), alpha at the held rank, and dropout probability of the new adapter."""
    set_scaling(layer, adapter, facts.scaling)
    held_rank = layer.r[adapter]
    layer.lora_alpha[adapter] = alpha_for_scaling(facts.scaling, held_rank, facts.use_rslora)
    dropout = layer.lora_dropout[adapter]
    if isinstance(dropout, nn.Dropout) and facts.dropout > 0:
        dropout.p = facts.dropout
    elif isinstance(dropout, nn.Dropout) != (facts.dropout > 0):
        layer.lora_dropout[adapter] = nn.Dropout(facts.dropout) if facts.dropout > 0 else nn.Identity()
    _forget_cached_stacks(layer)


def hotswap_adapter(
    model: nn.Module,
    model_name_or_path: str | os.PathLike,
    adapter_name: str,
    torch_device: str | torch.device | None = None,
    **kwargs: Any,
) -> None:
    """Load the adapter at ``model_name_or_path`` (directory or hub id) into the slot of ``adapter_name``.

    PEFT's ``peft.utils.hotswap.hotswap_adapter``: the adapter name stays, weights and scalings are replaced
    in place (see :func:`swap_adapter_weights`). ``kwargs`` may hold ``subfolder`` and hub arguments.
    """
    hub = split_hub_kwargs(kwargs)
    subfolder = kwargs.pop("subfolder", None)
    config = PeftConfig.from_pretrained(model_name_or_path, subfolder=subfolder, **hub)
    state = read_weights(model_name_or_path, subfolder=subfolder, device=torch_device or "cpu", **hub)
    swap_adapter_weights(model, adapter_name, config, state)
