"""Tiny models, inputs, a tokenizer and shared checks for the prompt-method tests (nothing downloaded).

Every builder seeds torch first, so two calls give bit-identical base weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 64
WORDS = ["<pad>", "<unk>", *"classify the sentiment of this review as positive or negative".split()]


def _llama_config(**extra: Any) -> LlamaConfig:
    # Grouped-query attention (2 heads, 1 key-value head) so that prefix tuning's per-KV-head sizing is exercised.
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.3,  # weights large enough for a few virtual tokens to steer the model
        **extra,
    )


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "llama": lambda: LlamaForCausalLM(_llama_config()),
    "llama_seq_cls": lambda: LlamaForSequenceClassification(_llama_config(num_labels=3)),
    "llama_base": lambda: LlamaModel(_llama_config()),
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
            initializer_range=0.3,
        )
    ),
    "t5": lambda: T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            initializer_factor=4.0,  # as for llama: large enough weights that inputs and prompts matter
        )
    ),
}


def build(kind: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of ``kind`` in eval mode; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    model = _BUILDERS[kind]().eval()
    if getattr(model, "generation_config", None) is not None:
        # No end-of-sequence token: generations always have max_new_tokens tokens, comparable to a forward loop.
        model.generation_config.pad_token_id = 0
        model.generation_config.eos_token_id = None
    return model


def batch(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch of 2 sequences of 6 tokens, the second left-padded by one token, with fitting labels."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (2, 6), generator=gen)
    mask = torch.ones_like(input_ids)
    mask[1, 0] = 0
    if kind == "llama_seq_cls":
        return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([0, 2])}
    if kind == "t5":
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.randint(2, VOCAB, (2, 4), generator=gen),
        }
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.clone()}


def target_batch(kind: str, token: int = 7) -> dict[str, torch.Tensor]:
    """:func:`batch` with every label set to ``token``: a task a few virtual tokens can learn ("always say 7")."""
    inputs = batch(kind)
    inputs["labels"] = torch.full_like(inputs["labels"], token % 3 if kind == "llama_seq_cls" else token)
    return inputs


def make_tokenizer(directory: Path) -> str:
    """Save a word-level tokenizer over :data:`WORDS` (ids 0..len-1) into ``directory``; returns its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(directory)
    return str(directory)


def cache_keyword(model: nn.Module) -> str:
    """The keyword under which the installed transformers' ``model.forward`` takes the key/value cache (the
    name changed from ``past_key_values`` to ``cache``; the old one only goes through a deprecation shim)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


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
