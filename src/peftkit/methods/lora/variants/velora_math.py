"""VeLoRA's compression of a layer input into rank-1 sub-token projections, and the autograd function that keeps
only the compressed input for the weight gradient (Miles et al., 2024, "VeLoRA: Memory Efficient Training using
Rank-1 Sub-Token Projections", arXiv:2405.17991, eq. 1 and 2).

For an input ``x (..., in)`` flattened to ``T`` tokens, ``num_groups = G`` and ``D = ceil(in / G)``:

* grouping: ``x`` is zero-padded to ``G * D`` features and viewed as ``(T, G, D)`` sub-tokens;
* compression (eq. 1): ``c[t, g] = <x[t, g, :], v>`` with a unit vector ``v (D,)``, so ``c`` is ``(T, G)``:
  ``G`` numbers per token instead of ``in``;
* reconstruction (eq. 2): ``x_hat[t, g, :] = scale * c[t, g] * v``, cut back to ``in`` features.

:class:`VeloraFunction` computes ``y = x W^T + b`` exactly and saves ``c`` (not ``x``); its backward gives the
exact input gradient ``dL/dx = dL/dy W`` and the approximate weight gradient ``dL/dW = dL/dy^T x_hat``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from peftkit.methods.lora.autograd import DropMask


def group_dim(in_features: int, num_groups: int) -> int:
    """``D = ceil(in_features / num_groups)``, the features per sub-token."""
    return -(-in_features // num_groups)


def grouped_subtokens(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``x (..., in)`` zero-padded to ``G * D`` features, as ``(T, G, D)`` sub-tokens (``T``: all leading dims)."""
    dim = group_dim(x.shape[-1], num_groups)
    padding = num_groups * dim - x.shape[-1]
    if padding:
        x = F.pad(x, (0, padding))
    return x.reshape(-1, num_groups, dim)


def compress_activations(x: torch.Tensor, embed: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``c (T, G)``: each sub-token of ``x (..., in)`` projected on ``embed (D,)`` (eq. 1)."""
    return torch.einsum("tgd,d->tg", grouped_subtokens(x, num_groups), embed)


def reconstruct_activations(
    compressed: torch.Tensor, embed: torch.Tensor, in_features: int, velora_scale: float
) -> torch.Tensor:
    """``x_hat (T, in)``: ``velora_scale * c[t, g] * embed`` per sub-token, padding cut off (eq. 2)."""
    tokens, groups = compressed.shape
    rebuilt = (compressed.unsqueeze(-1) * embed.view(1, 1, -1)).reshape(tokens, groups * embed.numel())
    return rebuilt[:, :in_features] * velora_scale


def normalize_projection(embed: torch.Tensor) -> torch.Tensor:
    """``embed / ||embed||`` in float32; an all-zero vector becomes the normalised all-ones vector."""
    embed = embed.float()
    norm = torch.linalg.vector_norm(embed)
    if norm == 0:
        embed = torch.ones_like(embed)
        norm = torch.linalg.vector_norm(embed)
    return embed / norm


def batch_projection(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The ``batch_average`` projection: the normalised mean of all sub-tokens of ``x``, float32 ``(D,)``."""
    with torch.no_grad():
        subtokens = grouped_subtokens(x.detach(), num_groups)
        return normalize_projection(subtokens.reshape(-1, subtokens.shape[-1]).mean(dim=0))


class VeloraFunction(torch.autograd.Function):
    """``F.linear(input, weight, bias)`` that saves ``input`` compressed to ``(T, G)`` for the weight gradient.

    ``apply(input (..., in), weight (out, in), bias (out,) | None, embed (D,), num_groups, velora_scale)``;
    gradients flow to ``input``, ``weight`` and ``bias`` (computed in the dtype of the incoming gradient, returned
    in each tensor's own dtype), never to ``embed``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        embed: torch.Tensor,
        num_groups: int,
        velora_scale: float,
    ) -> torch.Tensor:
        """``F.linear(input, weight, bias)``; saves ``compress_activations(input)`` ``(T, G)``, not ``input``."""
        ctx.input_shape, ctx.input_dtype = tuple(input.shape), input.dtype
        ctx.num_groups, ctx.velora_scale = num_groups, velora_scale
        ctx.bias_dtype = None if bias is None else bias.dtype
        compressed = compress_activations(input, embed.to(input.dtype), num_groups)
        ctx.save_for_backward(compressed, weight, embed)
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``dL/dinput = g W`` (exact), ``dL/dweight = g^T x_hat`` (from the rebuilt input), ``dL/dbias = sum g``."""
        compressed, weight, embed = ctx.saved_tensors
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = (grad_2d @ weight.to(grad_2d.dtype)).reshape(ctx.input_shape).to(ctx.input_dtype)
        return (
            grad_input,
            *parameter_grads(ctx, grad_2d, compressed, weight, embed, ctx.needs_input_grad[1:3]),
            None,
            None,
            None,
        )


def parameter_grads(
    ctx: Any,
    grad_2d: torch.Tensor,
    compressed: torch.Tensor,
    weight: torch.Tensor,
    embed: torch.Tensor,
    needed: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dweight, dL/dbias)`` from ``grad_2d (T, out)``: ``g^T x_hat`` with ``x_hat`` rebuilt from
    ``compressed (T, G)`` (computed in ``g``'s dtype, returned in the weight's), and ``sum_t g_t``."""
    dtype = grad_2d.dtype
    grad_weight = grad_bias = None
    if needed[0]:
        rebuilt = reconstruct_activations(compressed.to(dtype), embed.to(dtype), ctx.input_shape[-1], ctx.velora_scale)
        grad_weight = (grad_2d.transpose(0, 1) @ rebuilt).to(weight.dtype)
    if needed[1]:
        grad_bias = grad_2d.sum(dim=0).to(ctx.bias_dtype)
    return grad_weight, grad_bias


class VeloraDropoutFunction(torch.autograd.Function):
    """VeLoRA after dropout without keeping the dropout mask: ``F.linear(dropout_p(x), weight, bias)``.

    ``apply(x (..., in), dropped, weight (out, in), bias, embed (D,), num_groups, velora_scale, p, seed)``, where
    ``dropped = x * M / (1 - p)`` (no graph) with the mask ``M`` of
    :class:`~peftkit.methods.lora.autograd.DropMask` ``(x, p, seed)``. Saved: ``dropped`` compressed to
    ``(T, G)`` and the seed; the backward draws ``M`` again for ``dL/dx = (g W) * M / (1 - p)``; the weight and
    bias gradients are :class:`VeloraFunction`'s (from the rebuilt ``dropped``). What autograd keeps per layer is
    ``T * G`` numbers, where ``nn.Dropout`` followed by :class:`VeloraFunction` keeps also the ``T * in`` mask.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        dropped: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        embed: torch.Tensor,
        num_groups: int,
        velora_scale: float,
        p: float,
        seed: int,
    ) -> torch.Tensor:
        """``F.linear(dropped, weight, bias)``; saves ``dropped`` compressed, not ``dropped`` nor the mask."""
        ctx.input_shape, ctx.input_dtype = tuple(x.shape), x.dtype
        ctx.velora_scale, ctx.p, ctx.seed = velora_scale, p, seed
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(compress_activations(dropped, embed.to(dropped.dtype), num_groups), weight, embed)
        return F.linear(dropped, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``dL/dx = (g W) * M / (1 - p)`` with ``M`` drawn again from the seed; the rest as VeloraFunction."""
        compressed, weight, embed = ctx.saved_tensors
        grad_2d = grad_output.reshape(-1, grad_output.shape[-1])
        grad_x = None
        if ctx.needs_input_grad[0]:
            product = grad_2d @ weight.to(grad_2d.dtype)  # (T, in), shaped like the flattened input
            grad_x = DropMask(product, ctx.p, ctx.seed).zero_(product).mul_(1 / (1 - ctx.p))
            grad_x = grad_x.reshape(ctx.input_shape).to(ctx.input_dtype)
        grads = parameter_grads(ctx, grad_2d, compressed, weight, embed, ctx.needs_input_grad[2:4])
        return grad_x, None, *grads, None, None, None, None, None


def dropped_input(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x * M / (1 - p)`` without a graph, ``M`` the mask of :class:`~peftkit.methods.lora.autograd.DropMask`
    ``(x, p, seed)`` (a fresh tensor shaped like ``x``)."""
    with torch.no_grad():
        flat = x.detach().reshape(-1, x.shape[-1])
        return DropMask(flat, p, seed).dropped_copy(flat).mul(1 / (1 - p)).view(x.shape)


# PEFT's names (``peft.tuners.lora.velora``), which its tests import.
_get_group_dim = group_dim
_reshape_to_grouped_subtokens = grouped_subtokens
_compress_activations = compress_activations
_reconstruct_activations = reconstruct_activations
_normalize_projection = normalize_projection
