"""A linear map whose weight is block-diagonal, stored packed: BD-LoRA's factor (PEFT's ``BlockDiagonalLinear``).

With ``k = nblocks`` blocks the dense weight ``W: (out, in)`` is ``diag(W_1, ..., W_k)`` with
``W_i: (out / k, in / k)``. Only the blocks are stored, stacked by rows: ``weight = [W_1; ...; W_k]`` of shape
``(out, in / k)`` (the shape of ``lora_A.weight`` / ``lora_B.weight`` in BD-LoRA's ``adapter_model.safetensors``).
The input splits into ``k`` chunks ``x = [x_1, ..., x_k]`` (``in / k`` features each) and
``y = [W_1 x_1, ..., W_k x_k]``: ``k`` times fewer multiply-adds and parameters than the dense map, and under
tensor parallelism with ``k`` shards each shard owns one block.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.errors import ConfigError
from peftkit.methods.lora.init import kaiming_uniform_


def check_divisible(in_features: int, out_features: int, nblocks: int, where: str = "BlockDiagonalLinear") -> None:
    """Require both sizes of a block-diagonal map to split into ``nblocks`` equal blocks.

    Raises:
        ConfigError: ``in_features`` or ``out_features`` is not divisible by ``nblocks``.
    """
    if nblocks < 1 or in_features % nblocks or out_features % nblocks:
        raise ConfigError(
            f"{where}: a block-diagonal factor of {out_features} x {in_features} cannot have {nblocks} blocks: "
            f"in_features={in_features} or out_features={out_features} is not divisible by nblocks={nblocks}. "
            "Choose an nblocks that divides the rank r and the layer's feature sizes."
        )


class BlockDiagonalLinear(nn.Module):
    """``y = x @ block_diag(W_1, ..., W_k)^T`` without bias; ``x (..., in) -> y (..., out)``.

    Args:
        in_features, out_features: Sizes of the dense map (each divisible by ``nblocks``).
        nblocks: Number of diagonal blocks ``k``.
        init_zero: Start from zeros (BD-LoRA's ``B``) instead of Kaiming-uniform (``a = 0``, fan-in ``in / k``:
            BD-LoRA's ``A``).

    Raises:
        ConfigError: a size is not divisible by ``nblocks``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int,
        init_zero: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_divisible(in_features, out_features, nblocks)
        self.in_features = in_features
        self.out_features = out_features
        self.nblocks = nblocks
        self.weight = nn.Parameter(torch.empty(out_features, in_features // nblocks, dtype=dtype, device=device))
        if self.weight.device.type != "meta":
            with torch.no_grad():
                if init_zero:
                    self.weight.zero_()
                else:
                    kaiming_uniform_(self.weight, a=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block ``i`` of the output is ``x_i @ W_i^T``: one batched product over the ``k`` blocks."""
        k = self.nblocks
        lead = x.shape[:-1]
        chunks = x.reshape(-1, k, self.in_features // k)  # (N, k, in/k)
        blocks = self.weight.view(k, self.out_features // k, self.in_features // k)  # (k, out/k, in/k)
        out = torch.einsum("bim,inm->bin", chunks, blocks)  # (N, k, out/k)
        return out.reshape(*lead, self.out_features)

    def weight_as_blockdiagonal_matrix(self) -> torch.Tensor:
        """The dense weight ``block_diag(W_1, ..., W_k)``, shape ``(out, in)`` (zeros off the diagonal blocks)."""
        return torch.block_diag(*self.weight.chunk(self.nblocks, dim=0))

    def extra_repr(self) -> str:
        """Sizes and block count, shown in the module's repr."""
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.nblocks}"


def dense_factor(module: nn.Module) -> torch.Tensor:
    """A LoRA factor's weight as a dense ``(out, in)`` matrix: unpacked for a :class:`BlockDiagonalLinear`."""
    if isinstance(module, BlockDiagonalLinear):
        return module.weight_as_blockdiagonal_matrix()
    weight: torch.Tensor = module.weight  # type: ignore[assignment]  # an nn.Linear factor
    return weight
