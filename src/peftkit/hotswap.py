"""Hot-swapping LoRA adapters in place: new weights into an existing adapter slot, no new modules.

A swap keeps every module, parameter object and tensor shape, so a ``torch.compile``-d model runs the next
forward without recompiling, when the model was prepared (:mod:`peftkit.hotswap_prepare`) for it:

* **ranks padded to a fixed maximum** ``R``: ``A (r, in) -> [A; 0] (R, in)`` and ``B (out, r) -> [B, 0]
  (out, R)``, so that ``B_pad @ A_pad = B @ A`` and an adapter of rank ``r' <= R`` is written into the
  top-left block with zeros elsewhere;
* **scalings held as 0-dim tensors**, updated with ``fill_`` so a new ``alpha`` takes effect without a new
  Python constant in the traced graph. The scaling is recomputed from the *new* adapter's config for every
  layer (``alpha / r`` or ``alpha / sqrt(r)``, after ``rank_pattern`` / ``alpha_pattern``); PEFT's reference
  keeps a stale one in some paths.

As in PEFT, a swap also works without preparation: a new adapter of a larger rank grows the slot (new tensor
shapes, so a compiled model recompiles), one of a smaller rank fills its leading block, and where the new adapter
has no weights for a layer the old adapter's weights there are zeroed (that layer then adds nothing). A new
adapter that targets a module the slot lacks is refused. LoRA on a fused expert parameter (``target_parameters``)
swaps the same way, each expert's rank block padded and written on its own (see :mod:`peftkit.hotswap_prepare`).

The adapter config registered on the model is rewritten to describe the adapter as held (rank ``R``, each
layer's alpha scaled by ``R / r``, the slot's target modules), so that saving after a swap writes a file that
reloads to the same outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from peftkit.config import CONFIG_NAME, PeftConfig
from peftkit.errors import AdapterNameError, HotswapError
from peftkit.hotswap_prepare import (
    CheckCompiled,
    config_as_held,
    expert_count,
    forget_cached_stacks,
    hold_scaling_as_tensor,
    is_plain_lora,
    lora_layers,
    pad_rank,
    pattern_name,
    prepare_adapter,
    prepare_model_for_compiled_hotswap,
    resolve_adapter_model,
    set_scaling,
    write_rank_block,
)
from peftkit.io.hub import resolve_file
from peftkit.io.keys import strip_prefix
from peftkit.io.load import read_weights, split_hub_kwargs
from peftkit.io.slot_map import slot_map
from peftkit.io.state import AdapterTensor
from peftkit.layers.tree_cache import TreeRecord, recall, remember
from peftkit.locking import exclusive
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.param import ParamWrapper, check_parameter_spec
from peftkit.methods.lora.scaling import alpha_for_scaling
from peftkit.registry import method_of

__all__ = [
    "CheckCompiled",
    "hold_scaling_as_tensor",
    "hotswap_adapter",
    "prepare_adapter",
    "prepare_model_for_compiled_hotswap",
    "resolve_adapter_model",
    "swap_adapter_weights",
]

#: Config fields that say which modules the adapter slot covers (kept from the slot's config after a swap).
_TARGETING_FIELDS = ("target_modules", "target_parameters", "exclude_modules", "layers_to_transform", "layers_pattern")


def _kind(config: PeftConfig) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def _rank_factor(key: str) -> str | None:
    """Which LoRA factor an on-disk key holds (``"A"``: rank on dim 0, ``"B"``: rank on dim 1), if any."""
    parts = key.split(".")
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return parts[-1][-1]
    if len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return parts[-2][-1]
    return None


def _blocks_by_layer(holders: list[tuple[str, LoraLayer]]) -> tuple[dict[str, int], dict[str, int]]:
    """``(experts, rows)``: ``layer name -> experts sharing its rank dimension`` (1 but for LoRA on an expert
    parameter) and ``layer name -> blocks of A's rows`` (experts, or a grouped convolution's groups, whose ``B``
    already holds its columns per group)."""
    experts = {name: expert_count(layer) for name, layer in holders}
    return experts, {name: experts[name] * layer.rank_groups for name, layer in holders}


def _layer_name(key: str) -> str:
    return key.rsplit(".lora_", 1)[0]


def _check_fit(
    adapter: str, expected: Mapping[str, AdapterTensor], experts: Mapping[str, int], state: Mapping[str, torch.Tensor]
) -> None:
    """Check that ``state`` fits the slot of ``adapter`` (whose tensors are ``expected``): no key outside it, each
    tensor's shape equal to the live one but for the rank (a multiple of the layer's ``experts``)."""
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise HotswapError(
            f"Cannot hot-swap into adapter {adapter!r}: the new adapter targets other modules, with weights for "
            f"modules the loaded one does not adapt ({unexpected[:5]}). Load it as a separate adapter instead "
            "(another adapter_name)."
        )
    for key, value in state.items():
        live = expected[key].tensor
        if live.is_floating_point() and not value.is_floating_point():
            raise HotswapError(f"Cannot hot-swap {key}: the file holds a {value.dtype} tensor where weights belong.")
        if value.shape == live.shape:  # the usual case: nothing more to check
            continue
        which = _rank_factor(key)
        dim = None if which is None else "AB".index(which)
        same_but_rank = (
            value.dim() == live.dim()
            and all(a == b for i, (a, b) in enumerate(zip(value.shape, live.shape)) if i != dim)
            and (dim is None or value.shape[dim] % experts.get(_layer_name(key), 1) == 0)
        )
        if value.shape != live.shape and (dim is None or not same_but_rank):
            raise HotswapError(
                f"Cannot hot-swap {key}: new shape {tuple(value.shape)} vs {tuple(live.shape)} in the model; "
                "the adapters were made for different base models."
            )


def _new_rank(name: str, layer: LoraLayer, adapter: str, state: Mapping[str, torch.Tensor]) -> int | None:
    """The new adapter's rank at layer ``name`` (per expert), ``None`` where the file has no factors for it."""
    a_key = f"{name}.lora_A.weight" if adapter in layer.lora_A else f"{name}.lora_embedding_A"
    return state[a_key].shape[0] // expert_count(layer) if a_key in state else None


def _new_layer_facts(
    inner: nn.Module, holders: list[tuple[str, LoraLayer]], adapter: str, config: PeftConfig
) -> dict[str, tuple[LoraLayer, Any]]:
    """``layer name -> (layer, facts)`` of the new adapter. For a config parsed by :func:`hotswap_adapter` (never
    handed out, so never changed) they are kept per slot while the model's walk is unchanged and the slot's layers
    are the same objects (:mod:`peftkit.layers.tree_cache`)."""
    key = ("hotswap_facts", adapter, id(config))
    found = recall(inner, key)
    if (
        found is not None
        and found[0] is config  # held by the value: its id cannot have been reused
        and len(found[1]) == len(holders)
        and all(found[1].get(name, (None,))[0] is layer for name, layer in holders)
    ):
        return found[1]
    facts_of = method_of(config).layer_facts
    out = {}
    for name, layer in holders:
        facts = facts_of(config, pattern_name(name, layer), layer.get_base_layer())  # type: ignore[misc]  # layer methods always have layer_facts (prompt methods never get here)
        if isinstance(layer, ParamWrapper):
            check_parameter_spec(facts, layer.parameter_name)
        out[name] = (layer, facts)
    if any(parsed is config for parsed in _PARSED.values()):  # a user's config object may change between calls
        remember(inner, key, TreeRecord(), (config, out))
    return out


def _check_ranks(layers: dict, ranks: Mapping[str, int | None]) -> None:
    """Check that the file's ranks match its config's."""
    for name, (_, facts) in layers.items():
        rank = ranks[name]
        if rank is not None and rank != facts.r:
            raise HotswapError(
                f"{name} has rank {rank} in the file but the adapter's config gives r={facts.r} for it; "
                "the adapter_config.json does not match its weights."
            )


def _check_capacity(layers: dict, adapter: str, ranks: Mapping[str, int | None]) -> None:
    for name, (layer, _) in layers.items():
        rank = ranks[name]
        if rank is not None and rank > layer.r[adapter]:
            raise HotswapError(
                f"Cannot hot-swap {name}: the new adapter has rank {rank}, the slot holds rank {layer.r[adapter]}. "
                "For ranks above the first adapter's, call model.enable_peft_hotswap(target_rank=R) before loading "
                "the first adapter."
            )


def _check_variants(layers: dict, adapter: str, ranks: Mapping[str, int | None]) -> None:
    """A LoRA variant's slot (BD-LoRA's packed blocks) takes only the same variant at the same rank: padding or a
    different layout would silently change what the factors mean."""
    for name, (layer, facts) in layers.items():
        held, new = layer.lora_variant.get(adapter), facts.variant
        rank = ranks[name]
        if (held is not None or new is not None) and (held != new or rank not in (None, layer.r[adapter])):
            raise HotswapError(
                f"Cannot hot-swap {name}: the slot holds {held!r} at rank {layer.r[adapter]}, the new adapter is "
                f"{new!r} at rank {rank}; LoRA variant adapters swap only for the same variant and rank."
            )


def _grow_slots(layers: dict, adapter: str, ranks: Mapping[str, int | None]) -> bool:
    """Grow (zero-pad: ``B A`` is kept) every slot whose new rank is larger; whether any grew."""
    grown = False
    for name, (layer, facts) in layers.items():
        rank = ranks[name]
        if rank is not None and rank > layer.r[adapter]:
            pad_rank(layer, adapter, rank, use_rslora=facts.use_rslora)
            grown = True
    return grown


def _write_weights(
    expected: Mapping[str, AdapterTensor],
    blocks: tuple[dict[str, int], dict[str, int]],
    state: Mapping[str, torch.Tensor],
) -> None:
    """Copy ``state`` into the slot's tensors ``expected`` (a smaller rank into the leading block of each expert,
    zeros elsewhere; ``blocks``: see :func:`_blocks_by_layer`); zero what it lacks."""
    experts, rows = blocks
    with torch.no_grad():
        for key, value in state.items():
            live = expected[key].tensor
            which = None if value.shape == live.shape else _rank_factor(key)
            if which is None:
                live.copy_(value)  # copy_ converts dtype and device
            else:
                count = (rows if which == "A" else experts).get(_layer_name(key), 1)
                write_rank_block(live, value, which, count)
        for key, tensor in expected.items():
            if tensor.required and key not in state:
                tensor.tensor.zero_()


@exclusive
def swap_adapter_weights(
    model: nn.Module,
    adapter_name: str,
    config: PeftConfig,
    state: Mapping[str, torch.Tensor],
    *,
    grow_ranks: bool = True,
) -> None:
    """Replace the weights and scalings of loaded LoRA adapter ``adapter_name`` with a new adapter, in place.

    Every check runs before anything changes: no module outside the slot's, shapes equal but for the rank, not
    merged. A layer whose new rank exceeds the slot's grows (zero-padded first); a smaller rank fills the leading
    block, zeros elsewhere, so ``B' A'`` equals the new adapter's; a layer the new adapter lacks is zeroed.

    Args:
        model: PeftModel or in-place transformers model holding ``adapter_name``.
        config: The new adapter's config (its ``r``, ``lora_alpha``, patterns and rsLoRA give the scalings).
        state: The new adapter's tensors with on-disk keys (``base_model.model.`` prefix optional).
        grow_ranks: ``False`` refuses a rank above the slot's instead of growing it (the transformers adapter
            methods, whose ``enable_peft_hotswap(target_rank=...)`` sets the slot's capacity).

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
    if not is_plain_lora(config) or not is_plain_lora(old):
        kinds = f"{_kind(old)} -> {_kind(config)}"
        raise HotswapError(f"Hot-swapping works for LoRA adapters only (not AdaLoRA, IA3 or prompts), got {kinds}.")
    walked, expected = slot_map(inner, adapter_name, old)  # kept across swaps while the model is unchanged
    holders = lora_layers(inner, adapter_name, walked)
    if any(adapter_name in layer.merged_adapters for _, layer in holders):
        raise HotswapError(f"Adapter {adapter_name!r} is merged into the base weights; unmerge it before swapping.")
    state = {strip_prefix(k): v for k, v in state.items()}
    layers = _new_layer_facts(inner, holders, adapter_name, config)
    ranks = {name: _new_rank(name, layer, adapter_name, state) for name, layer in holders}
    _check_ranks(layers, ranks)
    _check_variants(layers, adapter_name, ranks)  # before the shapes: a variant's packed factors differ in shape
    blocks = _blocks_by_layer(holders)
    _check_fit(adapter_name, expected, blocks[0], state)
    if not grow_ranks:
        _check_capacity(layers, adapter_name, ranks)
    if _grow_slots(layers, adapter_name, ranks):  # padding replaced the grown layers' tensors
        expected = slot_map(inner, adapter_name, old).tensors
    _write_weights(expected, blocks, state)
    held = {}
    for name, (layer, facts) in layers.items():
        _apply_layer_settings(layer, adapter_name, facts)
        held[pattern_name(name, layer)] = (layer.r[adapter_name], facts.scaling)
    new_config = config_as_held(config, held)
    for field_name in _TARGETING_FIELDS:
        if hasattr(old, field_name):
            setattr(new_config, field_name, getattr(old, field_name))
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
    forget_cached_stacks(layer)


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
    config = _swap_config(model_name_or_path, subfolder, hub)
    state = read_weights(model_name_or_path, subfolder=subfolder, device=torch_device or "cpu", **hub)
    swap_adapter_weights(model, adapter_name, config, state)


#: ``adapter_config.json`` text -> its parsed config, for the swaps of :func:`hotswap_adapter` (which only read the
#: config: the model keeps a copy, :func:`~peftkit.hotswap_prepare.config_as_held`). Parsing and validating a config
#: costs about a tenth of a swap, and swaps alternate between a few adapters.
_PARSED: dict[str, PeftConfig] = {}
_PARSED_MAX = 16


def _config_text(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _swap_config(model_name_or_path: str | os.PathLike, subfolder: str | None, hub: dict[str, Any]) -> PeftConfig:
    """The adapter's config, parsed once per distinct file content (see :data:`_PARSED`)."""
    path = resolve_file(model_name_or_path, CONFIG_NAME, subfolder=subfolder, **hub)
    text = _config_text(path)
    found = _PARSED.get(text) if text is not None else None
    if found is not None:
        return found
    config = PeftConfig.from_pretrained(model_name_or_path, subfolder=subfolder, **hub)  # its errors and warnings
    if text is not None and _config_text(path) == text:  # unchanged while parsed: the text describes it
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[text] = config
    return config
