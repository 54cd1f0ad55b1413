"""Tiny transformers models of every cache style prefix tuning meets, built from configs (nothing downloaded).

Each entry: ``name -> (builder, task_type)``. Together they cover encoder-only models that take a cache in their
self-attention (BERT, RoBERTa), ALiBi with a fused QKV (BLOOM), Falcon's three attention styles (multi-head,
multi-query with one cached head, the new architecture that caches every query head), multi-query GPT-BigCode,
grouped-query Mistral, Gemma 2 / Gemma 3 with sliding-window layers (window 4, shorter than prefix + input),
Gemma 3n whose last two layers reuse earlier layers' keys and values (they get no prefix of their own), OPT and an
encoder-decoder (BART).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as T
from tests._tiny import VOCAB, bert_config
from torch import nn

_SMALL = {"vocab_size": VOCAB, "hidden_size": 16, "num_attention_heads": 2}
_GEMMA = {**_SMALL, "intermediate_size": 32, "num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": 8}


def _bert() -> nn.Module:
    return T.BertForSequenceClassification(bert_config(positions=512))  # BERT's default position table


def _roberta() -> nn.Module:
    config = T.RobertaConfig(**_SMALL, intermediate_size=32, num_hidden_layers=2, num_labels=3, pad_token_id=1)
    return T.RobertaForSequenceClassification(config)


def _falcon(**style: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        heads = 4 if style.get("new_decoder_architecture") else 2
        config = T.FalconConfig(
            vocab_size=VOCAB, hidden_size=8 * heads, num_hidden_layers=2, num_attention_heads=heads, **style
        )
        return T.FalconForCausalLM(config)

    return build


MODELS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "bert": (_bert, "SEQ_CLS"),
    "roberta": (_roberta, "SEQ_CLS"),
    "bloom": (
        lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=2, n_head=2)),
        "CAUSAL_LM",
    ),
    "falcon": (_falcon(multi_query=False, new_decoder_architecture=False), "CAUSAL_LM"),
    "falcon_multi_query": (_falcon(multi_query=True, new_decoder_architecture=False), "CAUSAL_LM"),
    "falcon_new": (_falcon(new_decoder_architecture=True, num_kv_heads=2), "CAUSAL_LM"),
    "gpt_bigcode": (
        lambda: T.GPTBigCodeForCausalLM(
            T.GPTBigCodeConfig(
                vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, multi_query=True, bos_token_id=0, eos_token_id=0
            )
        ),
        "CAUSAL_LM",
    ),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(**_GEMMA)), "CAUSAL_LM"),
    "gemma2": (lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**_GEMMA, sliding_window=4)), "CAUSAL_LM"),
    "gemma3": (
        lambda: T.Gemma3ForCausalLM(
            T.Gemma3TextConfig(**_GEMMA, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
        ),
        "CAUSAL_LM",
    ),
    "gemma3n": (
        lambda: T.Gemma3nForCausalLM(
            T.Gemma3nTextConfig(
                **{**_GEMMA, "num_hidden_layers": 4},
                vocab_size_per_layer_input=VOCAB,
                hidden_size_per_layer_input=4,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"] * 2,
                num_kv_shared_layers=2,
                laurel_rank=2,
                altup_num_inputs=2,
                activation_sparsity_pattern=[0.0] * 4,
            )
        ),
        "CAUSAL_LM",
    ),
    "opt": (
        lambda: T.OPTForCausalLM(
            T.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=16,
                ffn_dim=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                word_embed_proj_dim=16,
            )
        ),
        "CAUSAL_LM",
    ),
    "bart": (
        lambda: T.BartForConditionalGeneration(
            T.BartConfig(
                vocab_size=VOCAB,
                d_model=16,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
            )
        ),
        "SEQ_2_SEQ_LM",
    ),
}


def build_prefix_model(name: str) -> nn.Module:
    """The tiny model ``name`` with seeded, enlarged weights (so a few virtual tokens move its outputs)."""
    torch.manual_seed(0)
    model = MODELS[name][0]()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0) if param.dim() > 1 else None
    return model.eval()


def prefix_inputs(name: str) -> dict[str, torch.Tensor]:
    """Two sequences of five tokens (the first left-padded by one), decoder inputs for encoder-decoders."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 5), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 0] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if MODELS[name][1] == "SEQ_2_SEQ_LM":
        inputs["decoder_input_ids"] = ids[:, :3]
    return inputs
