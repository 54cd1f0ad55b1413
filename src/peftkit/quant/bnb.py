"""bitsandbytes backends: ``bnb.nn.Linear4bit`` (NF4 / FP4, QLoRA: Dettmers et al., 2023, arXiv:2305.14314)
and ``bnb.nn.Linear8bitLt`` (LLM.int8(): Dettmers et al., 2022, arXiv:2208.07339).

4-bit: the weight is a ``Params4bit`` holding ``out * in / 2`` bytes (two 4-bit codes each) and a
``QuantState`` (per-block absmax, optionally itself 8-bit quantized: "double quantization"); ``W = code[q] *
absmax[block]``. 8-bit: ``CB (out, in)`` int8 and ``SCB (out,)`` row scales, ``W = CB * SCB / 127``.

bitsandbytes is imported here only, lazily (this module is loaded once ``bitsandbytes`` already is).

The CPU inference repack. On CPUs with AVX512-BF16, ``Linear4bit.forward`` rewrites its own weight in place
the first time it runs in eval mode on an input that does not require grad: the codes are reordered for
bitsandbytes' CPU inference kernel and the block absmax is rounded to bfloat16. From then on every forward,
training ones included, runs that inference kernel (no gradient to the input) with the rounded scales, so an
evaluation during training silently changes the adapters' gradients. :meth:`Bnb4bitBackend.prepare` turns that
repack off for the layers peftkit wraps (and undoes one that already happened); :meth:`release` turns it back
on when the adapter layer is unloaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError, UsageError


def bitsandbytes() -> Any:
    """The ``bitsandbytes`` module, imported on first use: peftkit's one import of it."""
    import bitsandbytes as bnb

    return bnb


#: Instance attribute through which ``Linear4bit.forward`` decides whether to repack for CPU inference.
REPACK_FLAG = "support_avx512bf16_for_cpu"
#: Where :meth:`Bnb4bitBackend.prepare` keeps the flag's original value for :meth:`Bnb4bitBackend.release`.
SAVED_REPACK_FLAG = "_peftkit_saved_repack_flag"


@dataclass
class Bnb4bitBackend:
    """``bnb.nn.Linear4bit``: logical shape from ``quant_state.shape``; requantization with the layer's own
    block size, code (nf4 / fp4), double quantization and storage dtype."""

    name: str = "bitsandbytes 4-bit"

    def matches(self, module: Any) -> bool:
        bnb = bitsandbytes()
        return isinstance(module, bnb.nn.Linear4bit) and isinstance(module.weight, bnb.nn.Params4bit)

    def weight_shape(self, module: Any) -> torch.Size:
        state = module.weight.quant_state
        if state is not None:
            return torch.Size(state.shape)
        return torch.Size((module.out_features, module.in_features))

    def dequantize(self, module: Any) -> torch.Tensor:
        bnb = bitsandbytes()
        weight = module.weight
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)

    def compute_dtype(self, module: Any) -> torch.dtype:
        return module.compute_dtype or module.weight.quant_state.dtype

    def replace_weight(self, module: Any, weight: torch.Tensor) -> None:
        bnb = bitsandbytes()
        old = module.weight
        data, state = bnb.functional.quantize_4bit(
            weight.to(old.quant_state.dtype).contiguous(),
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
        )
        module.weight = bnb.nn.Params4bit(
            data,
            requires_grad=False,
            quant_state=state,
            blocksize=old.blocksize,
            compress_statistics=old.compress_statistics,
            quant_type=old.quant_type,
            quant_storage=old.quant_storage,
            module=module,
            bnb_quantized=True,
        )
        module.quant_state = state

    def snapshot(self, module: Any) -> Any:
        return module.weight

    def restore(self, module: Any, snapshot: Any) -> None:
        module.weight = snapshot
        module.quant_state = snapshot.quant_state

    def prepare(self, module: Any) -> None:
        if SAVED_REPACK_FLAG not in module.__dict__:
            module.__dict__[SAVED_REPACK_FLAG] = getattr(module, REPACK_FLAG, False)
        setattr(module, REPACK_FLAG, False)
        self._undo_repack(module)

    def release(self, module: Any) -> None:
        if SAVED_REPACK_FLAG in module.__dict__:
            setattr(module, REPACK_FLAG, module.__dict__.pop(SAVED_REPACK_FLAG))

    def training_error(self, module: Any) -> str | None:
        return None

    @staticmethod
    def _undo_repack(module: Any) -> None:
        """Bring a weight that an eval forward already repacked for CPU inference back to the training layout
        (bitsandbytes' own inverse; the absmax it rounded to bfloat16 stays rounded, hence the warning)."""
        bnb = bitsandbytes()
        weight = module.weight
        if not getattr(weight.quant_state, "packing_format_for_cpu", False):
            return
        inverse = getattr(bnb.functional, "_convert_weight_packed_for_cpu_inverse", None)
        if inverse is None:
            raise UnsupportedError(
                f"This {type(module).__name__} was repacked for CPU inference and this bitsandbytes offers no "
                "inverse; reload the model and attach adapters before any evaluation."
            )
        weight.data, weight.quant_state = inverse(weight.data, weight.quant_state)
        module.quant_state = weight.quant_state
        warnings.warn(
            f"A {type(module).__name__} had been repacked by bitsandbytes for CPU inference (block scales rounded "
            "to bfloat16) before adapters were attached; it was converted back, with those scales still rounded. "
            "Attach adapters before evaluating a 4-bit model to keep its exact weights.",
            stacklevel=4,
        )


@dataclass
class _Int8Snapshot:
    weight: nn.Parameter
    state: Any


@dataclass
class Bnb8bitBackend:
    """``bnb.nn.Linear8bitLt`` with int8 weights: row-wise absmax quantization ``CB = round(127 W / SCB)``."""

    name: str = "bitsandbytes 8-bit"

    def matches(self, module: Any) -> bool:
        bnb = bitsandbytes()
        return isinstance(module, bnb.nn.Linear8bitLt) and module.weight.dtype == torch.int8

    def weight_shape(self, module: Any) -> torch.Size:
        return module.weight.shape

    @staticmethod
    def _codes(module: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CB, SCB)``: on the weight before the first forward, on the layer's matmul state after it."""
        weight, state = module.weight, module.state
        codes = getattr(weight, "CB", None)
        if codes is None:
            codes = state.CB if state.CB is not None else weight.data
        scales = getattr(weight, "SCB", None)
        scales = scales if scales is not None else state.SCB
        if scales is None:
            raise UsageError(
                f"This {type(module).__name__} has int8 weights but no row scales (SCB): it was never quantized. "
                "Load the model with BitsAndBytesConfig(load_in_8bit=True), or move the layer to a device first."
            )
        return codes, scales

    def dequantize(self, module: Any) -> torch.Tensor:
        bnb = bitsandbytes()
        codes, scales = self._codes(module)
        return bnb.functional.int8_vectorwise_dequant(codes, scales).to(torch.float32)

    def compute_dtype(self, module: Any) -> torch.dtype:
        bias = module.bias
        return bias.dtype if bias is not None else torch.float16

    def replace_weight(self, module: Any, weight: torch.Tensor) -> None:
        bnb = bitsandbytes()
        # bitsandbytes quantizes from float16 (Int8Params._quantize); the same path keeps the same rounding.
        codes, scales, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16).contiguous())
        old_state = module.state
        module.weight = bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=scales)
        state = bnb.MatmulLtState()
        state.threshold, state.has_fp16_weights = old_state.threshold, old_state.has_fp16_weights
        state.use_pool, state.is_training = old_state.use_pool, old_state.is_training
        module.state = state

    def snapshot(self, module: Any) -> Any:
        return _Int8Snapshot(module.weight, module.state)

    def restore(self, module: Any, snapshot: Any) -> None:
        module.weight, module.state = snapshot.weight, snapshot.state

    def prepare(self, module: Any) -> None:
        return None

    def release(self, module: Any) -> None:
        return None

    def training_error(self, module: Any) -> str | None:
        return None


BACKENDS = (Bnb4bitBackend(), Bnb8bitBackend())
