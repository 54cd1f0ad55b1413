"""LoftQ initialisation (Li et al., 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models",
arXiv:2310.08659): choose the quantized base ``Q`` and the factors together so that ``Q + B A`` is close to ``W``.

Alternating ``T`` times, starting from ``R = W (out, in)`` (float32):

* ``Q = dequantize(quantize(R))`` with bitsandbytes (NF4 in blocks of 64, or int8 per row),
* ``W - Q = U S V^T``; ``B = U_r sqrt(S_r) (out, r)``, ``A = sqrt(S_r) V_r^T (r, in)``,
* ``R = W - B A`` for the next round.

The base weight becomes ``Q`` (in its dtype: quantize it afterwards with the same settings) and the adapter starts
at ``B A``; as in PEFT the factors are not divided by the LoRA scaling, so ``lora_alpha = r`` makes ``Q + s B A``
the closest to ``W``. :func:`replace_lora_weights_loftq` does one round for a model whose base is already quantized
with bitsandbytes 4-bit, reading the original weights from the model's safetensors file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from peftkit.errors import ArgumentTypeError, ConfigError, UsageError
from peftkit.quant.bnb import bitsandbytes

__all__ = ["loftq_init", "replace_lora_weights_loftq"]

#: NF4 block size of ``bnb.nn.Params4bit`` (the reference's quantization of the residual).
NF4_BLOCKSIZE = 64


def low_rank_decomposition(weight: torch.Tensor, reduced_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L (out, r), R (r, in))`` with ``L R`` the best rank-``r`` approximation of ``weight``:
    ``L = U_r sqrt(S_r)``, ``R = sqrt(S_r) V_r^T``.

    Raises:
        ArgumentTypeError: ``weight`` is not a matrix.
    """
    if weight.dim() != 2:
        raise ArgumentTypeError(f"LoftQ decomposes matrices; this weight has {weight.dim()} dimensions.")
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    root = torch.sqrt(S[:reduced_rank])
    return U[:, :reduced_rank] * root[None, :], root[:, None] * Vh[:reduced_rank]


def quantization_roundtrip(weight: torch.Tensor, num_bits: int) -> torch.Tensor:
    """``dequantize(quantize(weight))`` with bitsandbytes: NF4 (blocks of 64, no double quantization) for 4 bits,
    row-wise absmax int8 for 8 bits; float32, on ``weight``'s device."""
    functional = bitsandbytes().functional
    if num_bits == 4:
        data, state = functional.quantize_4bit(
            weight, blocksize=NF4_BLOCKSIZE, compress_statistics=False, quant_type="nf4"
        )
        return functional.dequantize_4bit(data, state)
    codes, row_scales, _ = functional.int8_vectorwise_quant(weight)
    return functional.int8_vectorwise_dequant(codes, row_scales)


@torch.no_grad()
def loftq_init(
    weight: torch.Tensor, num_bits: int, reduced_rank: int, num_iter: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LoftQ of ``weight (out, in)``: ``(Q (out, in) in weight's dtype, A (r, in), B (out, r))`` in float32
    (see the module docstring; PEFT's function of the same name).

    Raises:
        ConfigError: ``num_bits`` not 4 or 8, or ``num_iter < 1``.
    """
    if num_bits not in (4, 8):
        raise ConfigError(f"LoftQ quantizes to 4 bits (NF4) or 8 bits (int8), not {num_bits}; set loftq_bits.")
    if num_iter < 1:
        raise ConfigError(f"LoftQ needs at least one alternating step, got loftq_iter={num_iter}.")
    target = weight.detach().to(torch.float32)
    residual = target.clone()
    for step in range(num_iter):
        quantized = quantization_roundtrip(residual, num_bits)
        L, R = low_rank_decomposition(target - quantized, reduced_rank)
        if step + 1 < num_iter:
            residual = target - L @ R
    return quantized.to(weight.dtype), R, L


def loftq_decomposition(
    base: nn.Module | None, weight: torch.Tensor, r: int, options: Mapping[str, int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, Q)`` for ``init_lora_weights="loftq"`` on ``weight (out, in)`` of ``base`` with ``options`` the
    config's ``loftq_config`` (``loftq_bits``, ``loftq_iter``).

    Raises:
        ArgumentTypeError: the base weight is already quantized (use :func:`replace_lora_weights_loftq`).
        ConfigError: no ``loftq_config``, or see :func:`loftq_init`.
    """
    stored = getattr(base, "weight", weight)
    if not stored.dtype.is_floating_point:
        raise ArgumentTypeError(
            "init_lora_weights='loftq' starts from the unquantized weights; load the model unquantized, or call "
            "replace_lora_weights_loftq on a model quantized with bitsandbytes 4-bit."
        )
    if not options:
        raise ConfigError("init_lora_weights='loftq' needs loftq_config=LoftQConfig(loftq_bits=..., loftq_iter=...).")
    quantized, A, B = loftq_init(weight, options.get("loftq_bits", 4), r, options.get("loftq_iter", 1))
    return A, B, quantized


def safetensors_files(peft_model: Any, model_path: str | None) -> list[str]:
    """The base model's ``model.safetensors`` (or its shards): in ``model_path`` (the file or its directory), else
    where the model was loaded from (a directory, or the local Hugging Face cache; nothing is downloaded).

    Raises:
        UsageError: no such file.
    """
    from peftkit.io.hub import resolve_file

    source = model_path
    if source is None:
        source = getattr(getattr(peft_model.get_base_model(), "config", None), "_name_or_path", None)
    if not source:
        raise UsageError("replace_lora_weights_loftq: the model has no name_or_path; pass model_path.")
    source = os.fspath(source)
    if source.endswith(".safetensors") and os.path.isfile(source):
        return [source]
    single = resolve_file(source, "model.safetensors", local_files_only=True)
    if single is not None:
        return [single]
    index = resolve_file(source, "model.safetensors.index.json", local_files_only=True)
    if index is None:
        raise UsageError(
            f"replace_lora_weights_loftq: no model.safetensors (or shards) at {source!r}; pass model_path."
        )
    with open(index, encoding="utf-8") as handle:
        shards = sorted(set(json.load(handle)["weight_map"].values()))
    return [os.path.join(os.path.dirname(index), shard) for shard in shards]


def _original_weights(peft_model: Any, model_path: str | None) -> Callable[[str], torch.Tensor]:
    """A reader of the unquantized weights by module name (the base model prefix tried with and without)."""
    from safetensors import safe_open

    files = safetensors_files(peft_model, model_path)
    base_prefix = getattr(peft_model.get_base_model(), "base_model_prefix", "") or ""

    def read(name: str) -> torch.Tensor:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as handle:
                keys = set(handle.keys())
                for candidate in (name, name.removeprefix(base_prefix + ".")):
                    if candidate in keys:
                        return handle.get_tensor(candidate)
        raise UsageError(f"replace_lora_weights_loftq: {name!r} is in none of {files}.")

    return read


@torch.no_grad()
def replace_lora_weights_loftq(
    peft_model: Any,
    model_path: str | None = None,
    adapter_name: str = "default",
    callback: Callable[[Any, str], bool] | None = None,
) -> None:
    """One LoftQ round for every LoRA layer on a bitsandbytes 4-bit base: ``A``, ``B`` of ``adapter_name`` from
    the rank-``r`` SVD of ``W - dequantize(Q)``, ``W`` read from the model's safetensors file(s). ``callback(model,
    module name) -> bool`` may reject a layer's new factors (they are then put back).

    Raises:
        UsageError: no LoRA layer on a 4-bit base, or the original weights cannot be found.
    """
    bnb = bitsandbytes()
    read = _original_weights(peft_model, model_path)
    prefix, found = "base_model.model.", False
    for name, module in peft_model.named_modules():
        lora_A = getattr(module, "lora_A", None)  # a LoRA Linear (duck-typed: layer.py imports this module's users)
        if lora_A is None or adapter_name not in lora_A or not isinstance(module.get_base_layer(), bnb.nn.Linear4bit):
            continue
        found = True
        short = name.removeprefix(prefix)
        weight = read(short + ".weight").to(torch.float32)
        base_weight = module.get_base_layer().weight
        quantized = bnb.functional.dequantize_4bit(base_weight.data, base_weight.quant_state).to(torch.float32)
        L, R = low_rank_decomposition(weight.to(quantized.device) - quantized, module.r[adapter_name])
        A, B = module.factor_tensors(adapter_name)
        before = A.detach().clone(), B.detach().clone()
        A.copy_(R)
        B.copy_(L)
        if callback is not None and not callback(peft_model, short):
            A.copy_(before[0])
            B.copy_(before[1])
    if not found:
        raise UsageError("replace_lora_weights_loftq found no LoRA layer on a bitsandbytes 4-bit base layer.")
