"""A tokenizer and shared checks for the prompt-method tests; their tiny models and batches are in
:mod:`tests._tiny` (re-exported here: ``build``, ``batch``, ``target_batch``, ``VOCAB``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tests._tiny import VOCAB, batch, build, target_batch
from torch import nn

__all__ = [
    "VOCAB", "WORDS", "batch", "build", "capture_inputs", "frozen_base_unchanged", "greedy_by_forward",
    "greedy_seq2seq_by_forward", "make_tokenizer", "target_batch", "train_losses",
]  # fmt: skip

WORDS = ["<pad>", "<unk>", *"classify the sentiment of this review as positive or negative".split()]


def make_tokenizer(directory: Path) -> str:
    """Save a word-level tokenizer over :data:`WORDS` (ids 0..len-1) into ``directory``; returns its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(directory)
    return str(directory)


def capture_inputs(model: nn.Module) -> dict[str, Any]:
    """Record the keyword arguments of every later call of ``model.forward`` (the last call wins)."""
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen.clear()
        seen.update(kwargs)

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def train_losses(model: nn.Module, inputs: dict[str, torch.Tensor], steps: int = 30, lr: float = 0.05) -> list[float]:
    """Train the trainable parameters with Adam on one batch; the loss after each step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def frozen_base_unchanged(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """Whether every base weight in ``before`` (a ``state_dict`` copy) is still the same in ``model``."""
    now = model.state_dict()
    return all(torch.equal(now[k], v) for k, v in before.items())


def greedy_by_forward(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, steps: int, positions: bool = False
) -> torch.Tensor:
    """Greedy decoding of a causal LM by repeated full forwards (no cache): the reference for ``generate``.

    ``positions``: pass position ids counted over the unmasked tokens, as ``generate`` does.
    """
    ids = input_ids
    with torch.no_grad():
        for _ in range(steps):
            extra = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if positions else {}
            logits = model(input_ids=ids, attention_mask=mask, **extra).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def greedy_seq2seq_by_forward(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, steps: int
) -> torch.Tensor:
    """Greedy decoding of an encoder-decoder model by repeated full forwards (decoder starts at token 0)."""
    decoder = torch.zeros((input_ids.shape[0], 1), dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder).logits
            decoder = torch.cat([decoder, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return decoder
