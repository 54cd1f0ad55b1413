"""OFT layers (Qiu et al., 2023, arXiv:2306.07280): a learned block-diagonal orthogonal ``R`` rotates the input
of the frozen weight, ``y = W (x R) + b`` for a row vector ``x``, i.e. the weight becomes ``W' = W R^T``.

``R = diag(R_1, ..., R_r)``, each ``R_k (b, b)`` the Cayley transform (exact, or its Neumann series) of the
skew-symmetric ``S_k`` whose strict upper triangle is row ``k`` of ``oft_R.<adapter>.weight`` (PEFT's name and
shape ``(r, b (b - 1) / 2)``, one row with ``block_share``). Linear rotates the input, as PEFT does; Conv2d
rotates the flattened filter ``W (C_out, C_in k k)`` and convolves with it, which is the function PEFT's merged
weights compute; Embedding rotates each looked-up vector (``oft_embedding_R``). Several active adapters compose
as their sequential merges do: ``W R_1^T ... R_n^T`` (input ``x R_n ... R_1``; an embedding ``e R_1 ... R_n``).
PEFT 0.21.2's unmerged forward rotates the input ``x R_1 ... R_n`` instead, which its own merge does not give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.errors import UnsupportedError
from peftkit.layers.base import AdapterLayer, BatchRouting
from peftkit.layers.features import in_out_features
from peftkit.layers.placement import adapter_device
from peftkit.merging.merge import update_weight
from peftkit.methods.lora.layer import adapter_dtype
from peftkit.methods.oft.orthogonal import (
    cayley,
    cayley_neumann,
    drop_blocks,
    project_to_ball,
    rotate_blocks,
    skew_from_upper,
)


@dataclass(frozen=True)
class OFTLayerSpec:
    """Per-layer facts derived from an :class:`~peftkit.methods.oft.config.OFTConfig` and the module.

    Attributes:
        r: Number of blocks ``r`` (``r * block_size`` is the rotated width).
        block_size: ``b``.
        module_dropout: Fraction of blocks set to the identity in a training forward.
        coft: Project each ``S_k`` onto the ball of radius ``eps / sqrt(rows)`` before use (in place).
        eps: COFT's radius.
        block_share: One stored block used at all ``r`` positions.
        use_cayley_neumann: Neumann series instead of the exact transform.
        num_cayley_neumann_terms: Terms of that series.
        init: ``True``: ``S = 0``; ``False``: ``S ~ N(0, 0.1^2)``.
    """

    r: int
    block_size: int
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5
    block_share: bool = False
    use_cayley_neumann: bool = True
    num_cayley_neumann_terms: int = 5
    init: bool = True


class OFTRotation(nn.Module):
    """One adapter's parameters: ``weight (rows, b (b - 1) / 2)`` (``rows`` = ``r``, or 1 with ``block_share``)."""

    def __init__(self, spec: OFTLayerSpec, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.spec = spec
        rows = 1 if spec.block_share else spec.r
        size = spec.block_size * (spec.block_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(rows, size, device=device, dtype=dtype))

    def blocks(self, dtype: torch.dtype | None = None, dropout: bool = False) -> torch.Tensor:
        """The rotation blocks ``(r, b, b)`` (COFT first projects the stored weight in place).

        Args:
            dtype: Compute in this dtype (default: the weight's).
            dropout: Apply ``module_dropout`` (training forwards only).
        """
        spec = self.spec
        if spec.coft:
            with torch.no_grad():
                self.weight.copy_(project_to_ball(self.weight, spec.block_size, spec.eps))
        weight = self.weight if dtype is None else self.weight.to(dtype)
        skew = skew_from_upper(weight, spec.block_size)
        if spec.use_cayley_neumann:
            rotation = cayley_neumann(skew, spec.num_cayley_neumann_terms)
        else:
            rotation = cayley(skew)
        if dropout and spec.module_dropout > 0 and rotation.shape[0] > 1:
            rotation = drop_blocks(rotation.unsqueeze(0), spec.module_dropout).squeeze(0)
        return rotation.expand(spec.r, -1, -1) if spec.block_share else rotation


class OFTLayer(AdapterLayer):
    """State shared by OFT layers: ``oft_R`` (PEFT's state-dict name; ``oft_embedding_R`` on embeddings), ``r``
    and ``oft_block_size`` per adapter."""

    adapter_layer_names = ("oft_R",)
    other_param_names = ("r", "oft_block_size")
    repr_prefix = "oft."
    #: The merge writes ``W R^T`` (the rotation acts on the input of ``W (out, in)``); ``False``: ``W R``.
    merge_transposed = True

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features = in_out_features(self.get_base_layer())
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict())
        self.r: dict[str, int] = {}
        self.oft_block_size: dict[str, int] = {}

    def update_layer(self, adapter: str, facts: OFTLayerSpec, init_weights: bool = True) -> None:
        """Create (or replace) adapter ``adapter`` with the blocks of ``facts``.

        Args:
            init_weights: ``False`` allocates without initialising, for weights a load will overwrite.
        """
        base = self.get_base_layer()
        rotation = OFTRotation(facts, adapter_device(base), adapter_dtype(base.weight))
        if init_weights:
            with torch.no_grad():
                rotation.weight.zero_() if facts.init else rotation.weight.normal_(0.0, 0.1)
        getattr(self, self.adapter_layer_names[0])[adapter] = rotation
        self.r[adapter] = facts.r
        self.oft_block_size[adapter] = facts.block_size
        if not self._active_adapter:
            self._active_adapter = [adapter]

    def rotation(self, adapter: str) -> OFTRotation:
        module: OFTRotation = getattr(self, self.adapter_layer_names[0])[adapter]
        return module

    def _rotate_weight(self, adapter: str, safe: bool, inverse: bool) -> None:
        """``W <- W R^T`` (``W R^{-T}`` when ``inverse``; ``W R`` / ``W R^{-1}`` without :attr:`merge_transposed`),
        ``W`` viewed as ``(rows, rotated width)``; computed in float32 at least."""
        blocks = self.rotation(adapter).blocks(
            dtype=torch.promote_types(self.rotation(adapter).weight.dtype, torch.float32)
        )
        factor = (torch.linalg.inv(blocks) if inverse else blocks).detach()
        factor = factor.mT if self.merge_transposed else factor

        def apply(weight: torch.Tensor) -> None:
            flat = weight.view(weight.shape[0], -1)
            flat.copy_(rotate_blocks(flat.to(factor.dtype), factor).to(weight.dtype))

        update_weight(self.get_base_layer(), apply, safe=safe, what=adapter)

    def merge_one(self, adapter: str, safe_merge: bool) -> None:
        self._rotate_weight(adapter, safe_merge, inverse=False)

    def unmerge_one(self, adapter: str) -> None:
        self._rotate_weight(adapter, safe=False, inverse=True)


class Linear(OFTLayer):
    """OFT on ``nn.Linear``; ``x (..., in) -> (..., out)``, the input rotated block by block before ``W``."""

    def adapt_input(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        rotation = self.rotation(adapter)
        blocks = rotation.blocks(dropout=self.training)
        return rotate_blocks(x.to(blocks.dtype), blocks).to(x.dtype)

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """``W (x R_n ... R_1)``: the last active adapter rotates first, so that merging them one after the other
        (``W R_1^T ... R_n^T``) gives the same function."""
        return super().adapted_forward(x, list(reversed(adapters)), *args, **kwargs)

    def mixed_forward(self, x: torch.Tensor, routing: BatchRouting, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One adapter per sample in one base forward: each sample's blocks ``(r, b, b)`` (the identity for the
        base model) gathered into ``(batch, r, b, b)``. Adapters of different block sizes take the generic path."""
        routing = routing.for_batch(x.shape[0])
        held = [name for name in routing.names if self.holds(name)]
        if len({self.oft_block_size[name] for name in held}) != 1:
            return super().mixed_forward(x, routing, *args, **kwargs)
        blocks = {name: self.rotation(name).blocks(dropout=self.training) for name in held}
        some = blocks[held[0]]
        identity = torch.eye(some.shape[-1], device=some.device, dtype=some.dtype).expand_as(some)
        stacked = torch.stack([blocks.get(name, identity) for name in routing.names])
        per_sample = stacked[routing.index_on(x.device)]
        count, size = some.shape[0], some.shape[-1]
        sliced = x.to(some.dtype).reshape(x.shape[0], -1, count, size)
        rotated = torch.einsum("nsrk,nrkc->nsrc", sliced, per_sample).reshape(x.shape).to(x.dtype)
        result: torch.Tensor = self.base_layer(rotated, *args, **kwargs)
        return result


class Conv2d(OFTLayer):
    """OFT on a square-kernel ``nn.Conv2d``; ``x (N, C_in, H, W) -> (N, C_out, H', W')`` convolved with the
    rotated filter ``W' = W R^T`` (``W`` flattened to ``(C_out, C_in k k)``), bias unchanged."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        kernel = self.get_base_layer().kernel_size
        if isinstance(base_layer, AdapterLayer) and tuple(kernel) != (1, 1):
            raise UnsupportedError(
                f"OFT cannot wrap another method's adapter layer on a {kernel[0]}x{kernel[1]} Conv2d in a mixed model: "
                "its rotation acts on the filter, which the inner layer does not expose as an input transform; "
                "give OFT and the other method different Conv2d targets (1x1 kernels stack)."
            )

    def adapted_forward(self, x: torch.Tensor, adapters: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base filter rotated, ``W R_1^T ... R_n^T``; wrapping another method's layer (a mixed model, 1x1
        kernels only) the input channels of every pixel are rotated instead (``x R_n ... R_1``, the same
        function) and the inner layer runs on them, as in PEFT."""
        if isinstance(self.base_layer, AdapterLayer):
            for name in reversed(adapters):
                blocks = self.rotation(name).blocks(dropout=self.training)
                x = rotate_blocks(x.movedim(1, -1).to(blocks.dtype), blocks).movedim(-1, 1).to(x.dtype)
            wrapped: torch.Tensor = self.base_layer(x, *args, **kwargs)
            return wrapped
        base = self.get_base_layer()
        weight = base.weight
        flat = weight.flatten(1)
        for name in adapters:  # W R_1^T ... R_n^T, what merging them one after the other writes
            blocks = self.rotation(name).blocks(dropout=self.training)
            flat = rotate_blocks(flat.to(blocks.dtype), blocks.mT)
        result: torch.Tensor = base._conv_forward(x, flat.to(weight.dtype).view_as(weight), base.bias)
        return result


class Embedding(OFTLayer):
    """OFT on ``nn.Embedding``: each looked-up vector ``e (embedding_dim,)`` becomes ``e R`` (PEFT's
    ``oft_embedding_R``); the merge rotates the table's rows, ``W <- W R``."""

    adapter_layer_names = ("oft_embedding_R",)
    merge_transposed = False

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer, fan_in_fan_out)
        # PEFT's OFT reports the rotated width as in_features: (embedding_dim, num_embeddings)
        self.in_features, self.out_features = self.out_features, self.in_features

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        blocks = self.rotation(adapter).blocks(dropout=self.training)
        return rotate_blocks(result.to(blocks.dtype), blocks).to(result.dtype)
