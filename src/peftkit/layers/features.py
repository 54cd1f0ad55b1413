"""``in_features`` / ``out_features`` of a wrapped module, which every PEFT adapter layer exposes.

Code written against PEFT reads ``layer.in_features`` on any adapter layer (its ``BaseTunerLayer`` subclasses
set both from the base layer), so peftkit's layers set them too, with PEFT's values per module type.
"""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.quant.base import weight_shape


def in_out_features(module: nn.Module) -> tuple[int | None, int | None]:
    """``(in, out)`` of ``module`` as PEFT reports them: ``in_features`` / ``out_features`` of a Linear (also a
    quantized one), ``in_channels`` / ``out_channels`` of a convolution, ``(num_embeddings, embedding_dim)`` of an
    Embedding, the ``(in, out)`` weight of transformers' ``Conv1D``; ``(None, None)`` for anything else (a
    LayerNorm, say)."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    if isinstance(module, Conv1D):
        rows, cols = weight_shape(module)
        return int(rows), int(cols)
    in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(in_features, int) and isinstance(out_features, int):
        return in_features, out_features
    return None, None
