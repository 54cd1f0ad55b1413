"""Trainable tokens on tied word embeddings: the output head follows the input embedding.

With ``tie_word_embeddings`` the head computes ``logits = h E^T`` with the input embedding's table ``E``. When an
adapter trains rows of ``E``, the head is wrapped too and shares those rows (the same ``Parameter``), so both
sides see one adapted table, as in PEFT (which also saves the head's copy of the rows).
"""

from __future__ import annotations

from torch import nn

from peftkit.layers.base import AdapterLayer
from peftkit.layers.wrap import replace_module
from peftkit.methods.lora.tying import tied_embedding_names
from peftkit.methods.trainable_tokens.layer import TrainableTokensLayer


def tie_output_head(model: nn.Module, adapter: str, layer_class: type[TrainableTokensLayer]) -> str | None:
    """Give the tied output head ``adapter``'s rows of the input embedding (wrapping it in ``layer_class``).

    Returns:
        The head's module name, or ``None`` when the embeddings are not tied or the input embedding does not hold
        ``adapter``.
    """
    tied = tied_embedding_names(model)
    if tied is None:
        return None
    source, head = (model.get_submodule(name) for name in tied)
    if not isinstance(source, TrainableTokensLayer) or adapter not in source.trainable_tokens_delta:
        return None
    if isinstance(head, AdapterLayer) and not isinstance(head, TrainableTokensLayer):
        return None  # another method adapts the head; it keeps its own weights
    if not isinstance(head, TrainableTokensLayer):
        wrapped = layer_class(head)
        replace_module(model, tied[1], wrapped)
        head = wrapped
    head.tie_to(source, adapter)
    return tied[1]
