"""Fully Sharded Data Parallel for adapter models: which modules form a wrap unit, the mixed-precision dtype of
a QLoRA base, and what transformers' Trainer asks of PEFT when its ``fsdp`` arguments are set.

* FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each unit's parameters whatever their
  ``requires_grad``, so a frozen decoder layer and its adapters form one unit: :func:`fully_shard_model`
  shards every transformer block (the model's ``_no_split_modules``) and then the root.
* FSDP1 flattens each unit's parameters into one tensor, which must be all frozen or all trainable (unless
  ``use_orig_params=True``): :func:`fsdp_auto_wrap_policy` (PEFT's name) wraps every leaf module with a
  trainable weight (``lora_A``/``lora_B``/...) on its own, plus the transformer blocks and prompt encoders.
* QLoRA keeps 4-bit weights packed in a float storage dtype (``bnb_4bit_quant_storage``); FSDP must use
  that dtype for every parameter of a unit (:func:`quant_storage_dtype`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftkit.errors import TargetingError

#: accelerate's environment variable naming the block classes to wrap (comma-separated), as PEFT reads it.
CLASSES_ENV = "FSDP_TRANSFORMER_CLS_TO_WRAP"


def block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The transformer block classes of ``model``: those named by ``FSDP_TRANSFORMER_CLS_TO_WRAP`` or else by the
    ``_no_split_modules`` of every transformers model inside it.

    Raises:
        TargetingError: a class named in the environment variable is not in the model.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(type(module), "_no_split_modules", None) or ())
    requested = [n for n in os.environ.get(CLASSES_ENV, "").split(",") if n]
    found = {type(m) for m in model.modules() if type(m).__name__ in (set(requested) or names)}
    missing = sorted(set(requested) - {cls.__name__ for cls in found})
    if missing:
        raise TargetingError(f"{CLASSES_ENV} names {missing}, which the model does not contain; fix the variable.")
    return found


def _prompt_encoder_classes() -> set[type[nn.Module]]:
    from peftkit.methods.p_tuning.encoder import PromptEncoder
    from peftkit.methods.prefix_tuning.encoder import PrefixEncoder
    from peftkit.methods.prompt_tuning.embedding import PromptEmbedding

    return {PromptEmbedding, PromptEncoder, PrefixEncoder}


def _is_trainable_leaf(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return not module._modules and isinstance(weight, torch.Tensor) and weight.requires_grad


def fsdp_auto_wrap_policy(model: nn.Module) -> Callable[..., bool]:
    """An FSDP1 ``auto_wrap_policy`` for adapter models: a unit per transformer block, per prompt encoder, and
    per leaf module with a trainable weight (so frozen and trainable parameters never share a flat parameter).

    Call after the adapters are added (trainability is read then).
    """
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    classes = block_classes(model) | _prompt_encoder_classes()
    by_class = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes)
    trainable = functools.partial(lambda_auto_wrap_policy, lambda_fn=_is_trainable_leaf)
    return functools.partial(_or_policy, policies=[trainable, by_class])


def quant_storage_dtype(model: nn.Module) -> torch.dtype | None:
    """The float dtype that a QLoRA base packs its 4-bit weights in (``bnb_4bit_quant_storage``), which FSDP's
    mixed-precision policy must use for every parameter; ``None`` for other models."""
    quantizer = getattr(model, "hf_quantizer", None)
    storage = getattr(getattr(quantizer, "quantization_config", None), "bnb_4bit_quant_storage", None)
    if isinstance(storage, torch.dtype) and storage.is_floating_point:
        return storage
    for param in model.parameters():
        storage = getattr(param, "quant_storage", None)
        if type(param).__name__ == "Params4bit" and isinstance(storage, torch.dtype) and storage.is_floating_point:
            return storage
    return None


def fully_shard_model(model: nn.Module, **fully_shard_kwargs: Any) -> nn.Module:
    """Shard ``model`` with FSDP2: every transformer block (base and adapters together), then the root.

    For a QLoRA base without an explicit ``mp_policy``, parameters are used in the quantization storage dtype.
    Returns ``model`` (sharded in place).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    storage = quant_storage_dtype(model)
    if storage is not None and "mp_policy" not in fully_shard_kwargs:
        fully_shard_kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=storage, reduce_dtype=storage)
    classes = tuple(block_classes(model))
    for module in list(model.modules()):
        if classes and isinstance(module, classes):
            fully_shard(module, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


def update_fsdp_plugin(model: nn.Module, accelerator: Any) -> None:
    """What transformers' Trainer asks of PEFT before accelerate wraps an adapter model (its
    ``update_fsdp_plugin_peft``): the adapter wrap policy for FSDP1 (FSDP2 keeps per-block units), and the QLoRA
    storage dtype as the mixed-precision dtype."""
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) == 1:
        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    storage = quant_storage_dtype(model)
    if storage is not None:
        plugin.set_mixed_precision(storage, override=True)
