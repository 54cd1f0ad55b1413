"""EVA initialisation (Paischer et al., 2024, "One Initialization to Rule them All: Fine-tuning via Explained
Variance Adaptation", arXiv:2410.07170): ``A`` of each LoRA layer from the top right singular vectors of the layer's
inputs, with ranks redistributed across layers by explained variance.

For each adapted Linear / Conv1D layer with inputs ``X (n, in)`` streamed batch by batch, an incremental PCA
(:mod:`~peftkit.methods.lora.incremental_pca`) keeps ``k = round(rho * r)`` components ``V_k (k, in)`` until the
cosine similarity of consecutive estimates reaches ``tau`` for every component the layer needs. The total budget
``sum of r`` over layers then goes to the components with the largest explained-variance ratios over all layers
(a layer receives between 0 and ``k``); the layer's ``A`` becomes its first ``r'`` components (divided by
``sqrt(s_i)`` with ``whiten``), ``B = 0``, and ``lora_alpha`` is scaled by ``r' / r`` when
``adjust_scaling_factors`` (``alpha / r`` unchanged). A layer with ``r' = 0`` loses its adapter. Layers that see the
same input (``q``, ``k``, ``v`` projections) share one SVD. The config's ``target_modules``, ``rank_pattern`` and
``alpha_pattern`` are rewritten to describe the result, so the adapter saves and reloads like any LoRA.

Use: ``model = get_peft_model(base, LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(...)))``, then
``initialize_lora_eva_weights(model, dataloader)``; or ``get_eva_state_dict`` on the base model first and
``initialize_lora_eva_weights(model, eva_state_dict=...)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from peftkit.errors import ConfigError, UsageError
from peftkit.layers.state import apply_status
from peftkit.layers.wrap import replace_module
from peftkit.methods.lora.eva_driver import compute_eva_state_dict
from peftkit.methods.lora.eva_hooks import (
    prepare_layer_inputs_fn_language_modeling,
    prepare_model_inputs_fn_language_modeling,
)
from peftkit.methods.lora.layer import LoraLayer
from peftkit.methods.lora.layer_spec import LoraLayerSpec
from peftkit.targeting import pattern_value

__all__ = [
    "forward_fn_dict",
    "get_eva_state_dict",
    "initialize_lora_eva_weights",
    "prepare_layer_inputs_fn_language_modeling",
    "prepare_model_inputs_fn_language_modeling",
]

#: Base-layer wrappers whose inputs EVA does not decompose (as in PEFT): they keep the default initialisation.
_UNSUPPORTED_NAMES = ("Embedding", "Conv", "MultiheadAttention", "ParamWrapper")


def forward_fn_dict(model: nn.Module, inputs: Any) -> Any:
    """The default forward: ``model(**inputs)``."""
    return model(**inputs)


def _eva_capable(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and type(module).__name__ not in _UNSUPPORTED_NAMES


@torch.no_grad()
def get_eva_state_dict(
    model: nn.Module,
    dataloader: Iterable,
    peft_config: Any | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = forward_fn_dict,
    prepare_model_inputs_fn: Callable[[Any, Any], Any] | None = prepare_model_inputs_fn_language_modeling,
    prepare_layer_inputs_fn: Callable | Mapping[str, Callable] | None = prepare_layer_inputs_fn_language_modeling,
    adapter_name: str = "default",
    gather_distributed_inputs: bool = True,
    show_progress_bar: bool = True,
) -> dict[str, torch.Tensor]:
    """EVA's ``A`` for every layer: ``{module name: (r', in)}`` (``r'`` after redistribution, possibly 0).

    Args:
        model: A plain model (its Linear / Conv1D modules that ``peft_config`` targets; all of them when
            ``target_modules`` is ``None``) or a PEFT model (its LoRA Linear layers, run with adapters disabled).
        dataloader: Batches (with ``len``), cycled until every layer has converged.
        peft_config: The ``LoraConfig`` (``eva_config``, ``r``, ``rank_pattern``); a PEFT model's own by default.
        forward_fn: ``forward_fn(model, batch)`` runs a batch (default ``model(**batch)``).
        prepare_model_inputs_fn, prepare_layer_inputs_fn: See :mod:`peftkit.methods.lora.eva_hooks`; the latter
            may be ``{module name: fn}``.
        gather_distributed_inputs: Under ``torch.distributed``, decompose the rows of all ranks.
        show_progress_bar: Show a progress bar of converged layers.

    Raises:
        ConfigError: no ``peft_config`` for a plain model, or one without ``eva_config``.
        UsageError: the dataloader is empty, a layer never ran, names in ``prepare_layer_inputs_fn`` do not exist.
    """
    is_peft_model = hasattr(model, "peft_config")
    if peft_config is None:
        if not is_peft_model:
            raise ConfigError("get_eva_state_dict needs peft_config (a LoraConfig) for a model without adapters.")
        peft_config = model.peft_config[adapter_name]  # type: ignore[index]  # a PeftModel's dict of configs
    if getattr(peft_config, "eva_config", None) is None:
        raise ConfigError("get_eva_state_dict needs a LoraConfig with eva_config=EvaConfig(...).")
    if is_peft_model:
        context: Any = model.disable_adapter()  # type: ignore[operator]  # PeftModel's context manager
        targets = [(name, module) for name, module in model.named_modules() if _eva_capable(module)]
    else:
        from peftkit.methods.lora.calibration import linear_targets

        context, targets = nullcontext(), list(linear_targets(model, peft_config, everything_if_unset=True))
    with context:
        return compute_eva_state_dict(
            model, dataloader, peft_config, targets, forward_fn or forward_fn_dict, prepare_model_inputs_fn,
            prepare_layer_inputs_fn, gather_distributed_inputs, show_progress_bar,
        )  # fmt: skip


@torch.no_grad()
def initialize_lora_eva_weights(
    model: nn.Module,
    dataloader: Iterable | None = None,
    eva_state_dict: dict[str, torch.Tensor] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = forward_fn_dict,
    prepare_model_inputs_fn: Callable[[Any, Any], Any] | None = prepare_model_inputs_fn_language_modeling,
    prepare_layer_inputs_fn: Callable | Mapping[str, Callable] | None = prepare_layer_inputs_fn_language_modeling,
    adapter_name: str = "default",
    gather_distributed_inputs: bool = True,
    show_progress_bar: bool = True,
) -> nn.Module:
    """Write EVA's factors into the LoRA adapter ``adapter_name`` of ``model`` (computed from ``dataloader`` by
    :func:`get_eva_state_dict`, or given as ``eva_state_dict``), resizing layers to their redistributed ranks and
    rewriting the adapter's config to match. Returns ``model``.

    Raises:
        UsageError: ``model`` has no adapters, more than one is active, or neither data nor a state dict is given.
        ConfigError: the adapter was not created with ``init_lora_weights="eva"``.
    """
    if not hasattr(model, "peft_config"):
        raise UsageError("initialize_lora_eva_weights takes a PEFT model (get_peft_model(base, LoraConfig(...))).")
    peft_model: Any = model  # a PeftModel (checked above by its attribute, as PEFT does)
    if len(peft_model.active_adapters) > 1:
        raise UsageError("initialize_lora_eva_weights works with one active adapter; activate only the EVA one.")
    if peft_model.peft_config[adapter_name].init_lora_weights != "eva":
        raise ConfigError(f"Adapter {adapter_name!r} was not created with init_lora_weights='eva'; EVA cannot set it.")
    if eva_state_dict is None:
        if dataloader is None:
            raise UsageError("initialize_lora_eva_weights needs a dataloader or an eva_state_dict.")
        eva_state_dict = get_eva_state_dict(
            model, dataloader, None, forward_fn, prepare_model_inputs_fn, prepare_layer_inputs_fn, adapter_name,
            gather_distributed_inputs, show_progress_bar,
        )  # fmt: skip
    load_eva_state_dict(model, dict(eva_state_dict), adapter_name)
    return model


def _resize(layer: LoraLayer, adapter: str, rank: int, alpha: float, init: bool | str) -> None:
    """Re-create ``adapter``'s factors on ``layer`` at ``rank`` / ``alpha``, keeping its other per-layer facts."""
    dropout = layer.lora_dropout[adapter]
    spec = LoraLayerSpec(
        r=rank,
        alpha=alpha,
        dropout=float(getattr(dropout, "p", 0.0)),
        init=init,
        use_rslora=layer.use_rslora[adapter],
        use_dora=layer.use_dora[adapter],
        fan_in_fan_out=layer.fan_in_fan_out,
        lora_bias=getattr(layer.lora_B._modules.get(adapter), "bias", None) is not None,
        variant=layer.lora_variant.get(adapter),
    )
    layer.update_layer(adapter, spec)
    apply_status([layer], layer.recorded_status())  # the new tensors train as the old ones did


def load_eva_state_dict(model: nn.Module, eva_state_dict: dict[str, torch.Tensor], adapter: str) -> None:
    """Copy ``eva_state_dict`` (names as in ``model.named_modules()``) into the ``A`` of ``adapter``; layers given
    a different rank are resized, rank 0 removes the layer, layers missing from it are re-initialised as plain LoRA
    (with a warning). The adapter's config gets the new ``target_modules``, ``rank_pattern``, ``alpha_pattern``."""
    config: Any = model.peft_config[adapter]  # type: ignore[index]  # PeftModel's dict of configs
    eva = config.eva_config
    kept, missing, rank_pattern, alpha_pattern = [], [], {}, {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoraLayer) or adapter not in module.r:
            continue
        short = name.replace("base_model.model.", "")
        r = int(pattern_value(name, config.rank_pattern, config.r))
        alpha = float(pattern_value(name, config.alpha_pattern, config.lora_alpha))
        new_rank = r
        if name in eva_state_dict:
            factor = eva_state_dict.pop(name)
            new_rank = factor.size(0)
            if new_rank == 0:
                replace_module(model, name, module.get_base_layer())
                continue
            if new_rank != r and eva.adjust_scaling_factors:
                alpha *= new_rank / r
            if new_rank != r or module.factor_tensors(adapter)[0].device.type == "meta":
                _resize(module, adapter, new_rank, alpha, "eva")
            module.factor_tensors(adapter)[0].copy_(factor)
            kept.append(short)
        else:
            _resize(module, adapter, r, alpha, True)
            missing.append(short)
        if new_rank != config.r:
            rank_pattern[short] = new_rank
        if alpha != config.lora_alpha:
            alpha_pattern[short] = alpha
    config.target_modules = kept + missing
    config.rank_pattern, config.alpha_pattern = rank_pattern, alpha_pattern
    if missing:
        warnings.warn(
            f"EVA: these LoRA layers had no EVA factors and were initialised as plain LoRA (EVA decomposes the "
            f"inputs of Linear / Conv1D layers only): {missing}.",
            stacklevel=3,
        )
