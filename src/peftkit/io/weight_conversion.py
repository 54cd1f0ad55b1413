"""Saving a PiSSA / OLoRA adapter as a plain LoRA adapter of the *original* base model
(``save_pretrained(..., path_initial_model_for_weight_conversion=...)``, PEFT's option of the same name).

PiSSA (Meng et al. 2024) and OLoRA (Büyükakyüz 2024) start from factors ``A_0 (r, in)``, ``B_0 (out, r)`` taken
out of the base weight, so the model they train holds ``W_res = W - s B_0 A_0`` (``s`` the LoRA scaling). After
training to ``A``, ``B``, the model computes ``W_res + s B A = W + s (B A - B_0 A_0)``: the same update as a plain
LoRA of rank ``2r`` on the untouched ``W`` with

    A' = [A ; A_0]   (2r, in)        B' = [B , -B_0]   (out, 2r)        s' = s,

since ``B' A' = B A - B_0 A_0``. Keeping ``s`` at rank ``2r`` doubles ``lora_alpha`` (``alpha / r``), or multiplies
it by sqrt(2) with rsLoRA (``alpha / sqrt(r)``); rank and alpha patterns double the same way. Embedding factors
(``lora_embedding_A (r, num_embeddings)``, ``lora_embedding_B (dim, r)``) and convolution factors (rank on dim 0
of ``A`` and dim 1 of ``B``) concatenate on the same dimensions.

The initial factors are read from ``path`` (the adapter saved before training, PEFT's layout); the model and that
directory are not changed.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from typing import Any

import torch

from peftkit.config import PeftConfig
from peftkit.errors import CheckpointError, ConfigError, UnsupportedError

#: ``init_lora_weights`` values whose adapters start from factors taken out of the base weight (or from zero).
CONVERTIBLE_INITS = ("pissa", "olora", "corda", "lora_ga", "true")
_RANK_DIM = {"A": 0, "B": 1}
_FACTOR = re.compile(r"\.lora_(?:embedding_)?([AB])(?:\.weight)?$")


def convert_to_lora(
    config: PeftConfig, tensors: dict[str, torch.Tensor], path: str | os.PathLike
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The config and tensors of a plain rank-``2r`` LoRA equal to the trained adapter minus its initial state.

    Args:
        config: The adapter's config as it goes on disk (a ``LoraConfig``).
        tensors: The trained adapter's tensors, keys as on disk.
        path: The adapter directory saved before training (same targets and rank).

    Returns:
        A new config (``init_lora_weights=True``, rank, alpha and patterns adjusted) and new tensors; the
        arguments are not changed.

    Raises:
        UnsupportedError: not a LoRA adapter, or DoRA / ``lora_bias`` (their extra tensors depend on ``W``).
        ConfigError: rsLoRA together with rank or alpha patterns (no single alpha factor keeps every scaling).
        CheckpointError: the initial adapter lacks a factor of the trained one, or its shape differs.
    """
    _check_convertible(config)
    from peftkit.io.load import load_peft_weights

    initial = load_peft_weights(os.fspath(path), device="cpu")
    converted = dict(tensors)
    for key, value in tensors.items():
        match = _FACTOR.search(key)
        if match is None:
            continue
        start = initial.get(key)
        if start is None or start.shape != value.shape:
            found = "missing" if start is None else f"shape {tuple(start.shape)}"
            raise CheckpointError(
                f"The initial adapter at {os.fspath(path)!s} does not match the trained one at {key} ({found}, "
                f"trained: {tuple(value.shape)}); pass the directory saved from this model before training."
            )
        sign = 1.0 if match.group(1) == "A" else -1.0
        start = start.to(device=value.device, dtype=value.dtype)
        converted[key] = torch.cat([value, sign * start], dim=_RANK_DIM[match.group(1)])
    return _doubled_config(config), converted


def _check_convertible(config: Any) -> None:
    if getattr(config.peft_type, "value", config.peft_type) != "LORA":
        raise UnsupportedError(
            f"path_initial_model_for_weight_conversion converts LoRA adapters only, got a {config.peft_type} "
            "adapter; save it without that argument."
        )
    if getattr(config, "use_dora", False) or getattr(config, "lora_bias", False):
        raise UnsupportedError(
            "path_initial_model_for_weight_conversion cannot convert a DoRA or lora_bias adapter: its magnitude "
            "or bias depends on the base weight the conversion removes; save it without that argument."
        )
    if getattr(config, "use_rslora", False) and (config.rank_pattern or config.alpha_pattern):
        raise ConfigError(
            "path_initial_model_for_weight_conversion with use_rslora=True and rank_pattern / alpha_pattern "
            "cannot keep every layer's scaling at the doubled rank; save without the conversion or without rsLoRA."
        )
    if not str(config.init_lora_weights).lower().startswith(CONVERTIBLE_INITS):
        warnings.warn(
            f"path_initial_model_for_weight_conversion subtracts the initial factors, which is meant for "
            f"PiSSA / OLoRA adapters; this adapter was initialised with {config.init_lora_weights!r}.",
            UserWarning,
            stacklevel=4,
        )


def _doubled_config(config: Any) -> PeftConfig:
    converted: Any = copy.deepcopy(config)
    converted.init_lora_weights = True  # the start is already subtracted: a plain LoRA
    converted.r = 2 * config.r
    converted.lora_alpha = config.lora_alpha * (2**0.5 if config.use_rslora else 2)
    if config.rank_pattern:
        converted.rank_pattern = {key: 2 * value for key, value in config.rank_pattern.items()}
    if config.alpha_pattern:
        converted.alpha_pattern = {key: 2 * value for key, value in config.alpha_pattern.items()}
    return converted
