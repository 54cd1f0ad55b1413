"""Every tiny model the tests build (from configs: nothing is downloaded), and their inputs.

One config function per architecture (:func:`llama_config`, :func:`gpt2_config`, :func:`bert_config`,
:func:`t5_config`), sized by a few arguments; three families of models built from them, each with the exact
configuration its tests were written against (their expected values depend on the initial weights):

* :func:`build_model` -- the compatibility and contract models (peftkit vs the reference peft): hidden size
  16, biases on every Llama projection (for ``bias="all"`` / ``"lora_only"``), and a Conv2d net;
* :func:`build` -- the prompt-method models: hidden size 16, larger initial weights (so that a few virtual
  tokens steer the output), a pad token, no end-of-sequence token for generation;
* :func:`tiny_llama`, :func:`tiny_gpt2`, :func:`tiny_bert_cls`, :func:`tiny_t5` -- the transformers
  integration models (adapter methods, Trainer, hub, hot-swap): hidden size 32.

Every builder seeds torch first, so two calls give bit-identical base weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
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


# -- configs ------------------------------------------------------------------------------------------
def llama_config(
    hidden: int = 16, heads: int = 2, kv_heads: int = 1, positions: int = 32, layers: int = 2, **extra: Any
) -> LlamaConfig:
    """``layers`` layers, MLP width ``2 * hidden``, grouped-query attention (``kv_heads`` key-value heads)."""
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=positions,
        **extra,
    )


def gpt2_config(embd: int = 16, heads: int = 2, positions: int = 32, **extra: Any) -> GPT2Config:
    """Two layers (GPT-2's ``Conv1D`` projections)."""
    return GPT2Config(vocab_size=VOCAB, n_embd=embd, n_layer=2, n_head=heads, n_positions=positions, **extra)


def bert_config(hidden: int = 16, heads: int = 2, positions: int = 32, **extra: Any) -> BertConfig:
    """Two layers, MLP width ``2 * hidden``, three labels."""
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=positions,
        num_labels=3,
        **extra,
    )


def t5_config(d_model: int = 16, heads: int = 2, **extra: Any) -> T5Config:
    """Two encoder and two decoder layers, ``d_kv = 8``, MLP width ``2 * d_model``; decoding starts at 0."""
    return T5Config(
        vocab_size=VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=heads,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        **extra,
    )


# -- compatibility and contract models ------------------------------------------------------------------
class ConvNet(nn.Module):
    """A Conv2d (``kernel_size`` x ``kernel_size``) followed by a Linear head: ``(batch, 3, 6, 6) -> (batch, 5)``."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=kernel_size, padding=kernel_size // 2)
        self.lin = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.conv(x)).flatten(1))


class Conv1dNet(nn.Module):
    """A Conv1d followed by a Linear head: ``(batch, 4, 5) -> (batch, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, kernel_size=3, padding=1)
        self.lin = nn.Linear(6 * 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.conv(x)).flatten(1))


_COMPAT: dict[str, Callable[[], nn.Module]] = {
    # Biases everywhere so that bias="all" / "lora_only" have something to train and save.
    "llama": lambda: LlamaForCausalLM(llama_config(attention_bias=True, mlp_bias=True)),
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config()),
    "bert_seq_cls": lambda: BertForSequenceClassification(bert_config()),
    "convnet": ConvNet,
    "conv1dnet": Conv1dNet,
    "convnet_1x1": lambda: ConvNet(kernel_size=1),
    "mixtral": lambda: _moe("MixtralConfig", "MixtralForCausalLM"),  # experts (E, out, in)
    "gpt_oss": lambda: _moe(
        "GptOssConfig", "GptOssForCausalLM", head_dim=8, max_position_embeddings=131072
    ),  # (E, in, out)
}


def _moe(config_class: str, model_class: str, **extra: Any) -> nn.Module:
    """A one-layer mixture-of-experts model (4 experts, 2 per token) whose experts are fused 3-D parameters."""
    import transformers

    config = getattr(transformers, config_class)(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        **{"max_position_embeddings": 32, **extra},
    )
    return getattr(transformers, model_class)(config)


def build_model(kind: str, seed: int = 0) -> nn.Module:
    """A fresh compatibility model of ``kind`` (``llama``, ``gpt2``, ``bert_seq_cls``, ``convnet``,
    ``conv1dnet``, ``mixtral``, ``gpt_oss``) in eval mode."""
    torch.manual_seed(seed)
    return _COMPAT[kind]().eval()


def model_inputs(kind: str, seed: int = 1) -> dict[str, Any]:
    """Keyword inputs for a forward of a :func:`build_model` model (batch of 2)."""
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("convnet"):
        return {"x": torch.randn(2, 3, 6, 6, generator=gen)}
    if kind == "conv1dnet":
        return {"x": torch.randn(2, 4, 5, generator=gen)}
    return {"input_ids": torch.randint(0, VOCAB, (2, 7), generator=gen)}


def model_output(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The forward's main tensor (``logits`` for transformers models)."""
    with torch.no_grad():
        out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def randomise_adapter(model: nn.Module, seed: int = 2) -> None:
    """Perturb every adapter tensor and every trainable tensor, so that nothing is an identity.

    Covers LoRA A/B (and ``lora_B`` biases), DoRA magnitudes, modules_to_save copies and base biases
    trained by ``bias="all"`` / ``"lora_only"``, for all adapters (active or not).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad or ".lora_" in name or ".modules_to_save." in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


# -- prompt-method models -------------------------------------------------------------------------------
def _prompt_llama(**extra: Any) -> LlamaConfig:
    # Grouped-query attention (2 heads, 1 key-value head) so that prefix tuning's per-KV-head sizing is exercised;
    # weights large enough for a few virtual tokens to steer the model.
    return llama_config(positions=64, pad_token_id=0, initializer_range=0.3, **extra)


_PROMPT: dict[str, Callable[[], nn.Module]] = {
    "llama": lambda: LlamaForCausalLM(_prompt_llama()),
    "llama_seq_cls": lambda: LlamaForSequenceClassification(_prompt_llama(num_labels=3)),
    "llama_base": lambda: LlamaModel(_prompt_llama()),
    "gpt2": lambda: GPT2LMHeadModel(gpt2_config(positions=64, bos_token_id=1, eos_token_id=1, initializer_range=0.3)),
    # as for llama: large enough weights that inputs and prompts matter
    "t5": lambda: T5ForConditionalGeneration(t5_config(initializer_factor=4.0)),
}


def build(kind: str, seed: int = 0) -> nn.Module:
    """A fresh prompt-method model of ``kind`` (``llama``, ``llama_seq_cls``, ``llama_base``, ``gpt2``, ``t5``)."""
    torch.manual_seed(seed)
    model = _PROMPT[kind]().eval()
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


# -- transformers integration models --------------------------------------------------------------------
def integration_llama_config() -> LlamaConfig:
    """The integration tests' Llama: hidden size 32, 4 heads, 2 key-value heads, pad/bos/eos 0/1/2."""
    return llama_config(hidden=32, heads=4, kv_heads=2, positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """The integration tests' causal LM."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(integration_llama_config())


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """The integration tests' GPT-2 (``Conv1D`` layers)."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(gpt2_config(embd=32, heads=4, positions=64))


def tiny_bert_cls(seed: int = 0) -> BertForSequenceClassification:
    """The integration tests' sequence classifier."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(bert_config(hidden=32, heads=4, positions=64))


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    """The integration tests' encoder-decoder model."""
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(t5_config(d_model=32, heads=4))


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
    "bert": tiny_bert_cls,
    "t5": tiny_t5,
}


def inputs_for(model: nn.Module, batch: int = 2, length: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random token ids (and decoder ids for an encoder-decoder model) for an integration model."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (batch, 4), generator=generator)
    return out


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits in eval mode (no dropout)."""
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits
