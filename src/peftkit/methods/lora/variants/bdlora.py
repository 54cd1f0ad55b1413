"""BD-LoRA, block-diagonal LoRA (``LoraConfig(use_bdlora=BdLoraConfig(...))``; PEFT's variant).

For a layer ``W: (out, in)`` matched by ``target_modules_bd_a`` (a substring of its full name), ``A`` is
block-diagonal with ``k = nblocks`` blocks; matched by ``target_modules_bd_b``, ``B`` is::

    A = block_diag(A_1, ..., A_k)   A_i: (r / k, in / k)   stored packed as lora_A.weight (r, in / k)
    B = block_diag(B_1, ..., B_k)   B_i: (out / k, r / k)  stored packed as lora_B.weight (out, r / k)

the other factor staying dense (``A: (r, in)``, ``B: (out, r)``). Forward and merge are LoRA's with the dense
factors, ``y = W x + s B A dropout(x)`` and ``W' = W + s B A`` (transposed for ``fan_in_fan_out``), computed block
by block in the forward (:class:`~peftkit.methods.lora.variants.block_diagonal.BlockDiagonalLinear`). The
block-diagonal ``A`` starts Kaiming-uniform (``a = 0``) and the block-diagonal ``B`` at zero, whatever
``init_lora_weights`` says (PEFT's behaviour), so a new adapter leaves the output unchanged only when ``B`` is the
block-diagonal factor or the initialisation zeroes the dense ``B``. ``nblocks = 1`` is plain LoRA.

Only ``nn.Linear`` and GPT-2 ``Conv1D`` layers take it (PEFT: ``nn.Linear``); other layer types, quantized bases,
DoRA, and ``lora_bias`` on a block-diagonal ``B`` (which has no bias) are refused with a :class:`ConfigError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ConfigError
from peftkit.methods.lora.variant import LoraVariant
from peftkit.methods.lora.variants.bdlora_config import BdLoraConfig
from peftkit.methods.lora.variants.block_diagonal import BlockDiagonalLinear, check_divisible, dense_factor
from peftkit.quant.base import backend_for, weight_shape
from peftkit.targeting import pattern_value

if TYPE_CHECKING:
    from peftkit.methods.lora.layer import LoraLayer


class BdLoraLinearVariant(LoraVariant):
    """One layer's BD-LoRA: which factor is block-diagonal (``"A"`` or ``"B"``) and into how many blocks."""

    name = "bdlora"

    def __init__(self, factor: Literal["A", "B"], nblocks: int) -> None:
        self.factor = factor
        self.nblocks = nblocks

    def init(self, layer: LoraLayer, adapter: str, spec: Any) -> None:
        """Replace the dense ``lora_A`` (or ``lora_B``) of ``adapter`` by its block-diagonal counterpart, on the
        same device and in the same dtype: ``A`` Kaiming-uniform, ``B`` zero."""
        container = layer.lora_A if self.factor == "A" else layer.lora_B
        dense: Any = container[adapter]
        packed = BlockDiagonalLinear(
            dense.in_features,
            dense.out_features,
            self.nblocks,
            init_zero=self.factor == "B",
            dtype=dense.weight.dtype,
            device=dense.weight.device,
        )
        packed.weight.requires_grad_(dense.weight.requires_grad)
        container[adapter] = packed

    def delta_weight(self, layer: LoraLayer, adapter: str) -> torch.Tensor:
        """``s * block_diag(B) @ block_diag(A)`` in the base weight's dtype (the factors' for a quantized base;
        half-precision factors multiplied in float32), transposed for ``fan_in_fan_out``; shape of the base weight."""
        A, B = dense_factor(layer.lora_A[adapter]), dense_factor(layer.lora_B[adapter])
        base_dtype = layer.get_base_layer().weight.dtype
        dtype = base_dtype if base_dtype.is_floating_point else A.dtype  # a base quantized since injection
        if A.dtype in (torch.float16, torch.bfloat16):
            A, B = A.float(), B.float()
        delta = (B @ A) * layer.scaling[adapter]
        return (delta.T if layer.fan_in_fan_out else delta).to(dtype)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BdLoraLinearVariant) and (self.factor, self.nblocks) == (other.factor, other.nblocks)

    def __hash__(self) -> int:
        return hash((self.factor, self.nblocks))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(factor={self.factor!r}, nblocks={self.nblocks})"


def _matches(name: str, patterns: list[str] | None) -> bool:
    """PEFT's rule: a pattern matches when it occurs anywhere in the module's full name."""
    return any(pattern in name for pattern in patterns or [])


def _check_layer(config: Any, name: str, module: nn.Module) -> None:
    """BD-LoRA needs a dense ``nn.Linear`` / ``Conv1D`` base and no DoRA."""
    if not isinstance(module, (nn.Linear, Conv1D)) or backend_for(module) is not None:
        raise ConfigError(
            f"BD-LoRA (use_bdlora) adapts nn.Linear and Conv1D layers with dense weights only; {name!r} is a "
            f"{type(module).__name__}. Leave it out of target_modules or drop use_bdlora."
        )
    if config.use_dora:
        raise ConfigError("use_bdlora and use_dora are two LoRA variants that do not combine; choose one.")


def build(config: Any, module_name: str, module: nn.Module) -> BdLoraLinearVariant | None:
    """The BD-LoRA of layer ``module_name`` (``module`` its base layer), or ``None`` when the layer matches neither
    pattern list and ``match_strict`` is off (it then runs plain LoRA).

    Raises:
        ConfigError: the layer type cannot take BD-LoRA; it matches both lists, or neither with ``match_strict``;
            ``r`` or the block-diagonal factor's feature size is not divisible by ``nblocks``; ``lora_bias`` with a
            block-diagonal ``B``.
    """
    bd: BdLoraConfig = config.use_bdlora
    _check_layer(config, module_name, module)
    in_a, in_b = _matches(module_name, bd.target_modules_bd_a), _matches(module_name, bd.target_modules_bd_b)
    if in_a and in_b:
        raise ConfigError(
            f"BD-LoRA: {module_name!r} matches both target_modules_bd_a and target_modules_bd_b; make the patterns "
            "pick one block-diagonal factor per layer."
        )
    if not (in_a or in_b):
        if bd.match_strict:
            raise ConfigError(
                f"BD-LoRA: the adapted layer {module_name!r} matches neither target_modules_bd_a nor "
                "target_modules_bd_b, and match_strict=True. Add a pattern for it, leave it out of target_modules, "
                "or set match_strict=False in BdLoraConfig to give it plain LoRA."
            )
        return None
    r = int(pattern_value(module_name, config.rank_pattern, config.r))
    out_features, in_features = weight_shape(module)[::-1] if isinstance(module, Conv1D) else weight_shape(module)
    where = f"BD-LoRA on {module_name!r} (r={r})"
    if in_a:
        check_divisible(in_features, r, bd.nblocks, where)
        return BdLoraLinearVariant("A", bd.nblocks)
    check_divisible(r, out_features, bd.nblocks, where)
    if config.lora_bias:
        raise ConfigError(
            f"BD-LoRA: {module_name!r} has a block-diagonal lora_B, which has no bias, so lora_bias=True cannot be "
            "honoured there; set lora_bias=False or make lora_A the block-diagonal factor."
        )
    return BdLoraLinearVariant("B", bd.nblocks)
