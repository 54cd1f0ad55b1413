"""Evaluation for ``peftkit train``: answer loss and exact match of greedy-generated answers.

* loss = (1 / N) * sum over answer tokens t of -log p(token_t | tokens_<t), N = number of answer tokens
  (+ EOS) in the held-out split (token-weighted, so it does not depend on the batch size);
* exact match = share of held-out prompts whose greedy continuation, cut at EOS and stripped of
  surrounding spaces, equals the expected answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftkit.cli.examples import IGNORE_INDEX, Example, encode, pad_batch


@dataclass(frozen=True)
class Scores:
    """Held-out figures: mean answer-token loss, exact match (``None`` without answers) and predictions."""

    loss: float
    exact_match: float | None
    correct: int
    total: int
    predictions: tuple[str, ...] = ()


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def answer_loss(model: nn.Module, rows: Sequence[dict[str, list[int]]], pad_id: int, batch_size: int) -> float:
    """Token-weighted cross-entropy of the labelled tokens of ``rows`` (see the module docstring)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for chunk in _batches(rows, batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(chunk, pad_id).items()}
        labels = batch.pop("labels")
        # prompt methods return logits for their virtual tokens too: keep the last `length` positions
        logits = model(**batch).logits[:, -labels.shape[1] : -1].float()  # [batch, length - 1, vocab]
        targets = labels[:, 1:]  # [batch, length - 1]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


@torch.no_grad()
def greedy_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at EOS, decoded and stripped."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for chunk in _batches(prompts, batch_size):
        rows = [{"input_ids": list(tokenizer(p, add_special_tokens=True)["input_ids"])} for p in chunk]
        batch = {k: v.to(device) for k, v in pad_batch(rows, pad_id, left=True).items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
        )
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int,
    max_new_tokens: int,
    batch_size: int = 64,
) -> Scores:
    """Loss and exact match of ``model`` on ``examples`` (in eval mode; the previous mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rows = [encode(e, tokenizer, max_length) for e in examples]
        loss = answer_loss(model, rows, pad_id, batch_size)
        answered = [e for e in examples if e.answer is not None]
        if not answered:
            return Scores(loss, None, 0, 0)
        predictions = greedy_answers(model, tokenizer, [e.prompt for e in answered], max_new_tokens, batch_size)
        correct = sum(p == (e.answer or "").strip() for p, e in zip(predictions, answered))
        return Scores(loss, correct / len(answered), correct, len(answered), tuple(predictions))
    finally:
        model.train(was_training)
