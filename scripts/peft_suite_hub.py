"""A local stand-in for the model-hub ids that PEFT's own tests load, laid out as a Hugging Face hub cache.

PEFT's model tests (``test_decoder_models.py``, ``test_seq_classifier.py``, ...) call ``from_pretrained`` with ids
such as ``peft-internal-testing/tiny-random-OPTForCausalLM``. With no hub access they fail on both sides. This
module builds, for each id in :data:`MODELS`, a tiny randomly initialised model of the class the id names (hidden
size 32, 2 layers, vocabulary of :data:`VOCAB` tokens, seed fixed), saved with ``save_pretrained``, plus a fast
tokenizer (a character-level WordLevel vocabulary built with ``tokenizers``) for text models and an image
processor for vision models. The files go where huggingface_hub looks for them offline:
``<cache>/models--<org>--<name>/snapshots/<revision>/<files>`` with ``<cache>/models--<org>--<name>/refs/main``
holding ``<revision>``. Point ``HF_HUB_CACHE`` at ``<cache>`` and set ``HF_HUB_OFFLINE=1``: then
``AutoModel*.from_pretrained("<org>/<name>")`` resolves locally, for the reference ``peft`` and for peftkit alike.

Tests that check values of the real hub weights still fail (on both sides), so they drop out of the count.

Usage: ``python scripts/peft_suite_hub.py DIR`` (built once; ids already present are kept), or through
``scripts/peft_suite.py --local-hub DIR``.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB = 256
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Token ids of the special tokens, in the order of SPECIAL_TOKENS: pad 0, bos 1, eos 2, unk 3.
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_LLAMA_LIKE = {**_DECODER, "num_key_value_heads": 2, "max_position_embeddings": 64}
_BERT_LIKE = {**_DECODER, "max_position_embeddings": 64, "type_vocab_size": 2}


@dataclass(frozen=True)
class HubModel:
    """One stand-in: transformers config and model class names, tiny config sizes, and what to save beside it."""

    config_class: str
    model_class: str
    sizes: dict[str, Any] = field(default_factory=dict)
    tokenizer: bool = True
    image_processor: bool = False


MODELS: dict[str, HubModel] = {
    "peft-internal-testing/tiny-random-OPTForCausalLM": HubModel(
        "OPTConfig",
        "OPTForCausalLM",
        {**_DECODER, "ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 64},
    ),
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": HubModel(
        "GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
    ),
    "hf-internal-testing/tiny-random-gpt2": HubModel(
        "GPT2Config", "GPT2LMHeadModel", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
    ),
    "peft-internal-testing/tiny-random-GPTJForCausalLM": HubModel(
        "GPTJConfig", "GPTJForCausalLM", {"n_embd": 32, "n_layer": 2, "n_head": 4, "rotary_dim": 4, "n_positions": 64}
    ),
    "trl-internal-testing/tiny-random-LlamaForCausalLM": HubModel("LlamaConfig", "LlamaForCausalLM", _LLAMA_LIKE),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": HubModel(
        "LlamaConfig", "LlamaForSequenceClassification", _LLAMA_LIKE
    ),
    "peft-internal-testing/tiny-dummy-qwen2": HubModel("Qwen2Config", "Qwen2ForCausalLM", _LLAMA_LIKE),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": HubModel("Qwen3Config", "Qwen3ForCausalLM", _LLAMA_LIKE),
    "hf-internal-testing/tiny-random-MistralForCausalLM": HubModel("MistralConfig", "MistralForCausalLM", _LLAMA_LIKE),
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": HubModel(
        "Gemma3TextConfig", "Gemma3ForCausalLM", {**_LLAMA_LIKE, "head_dim": 8, "sliding_window": 8}
    ),
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration-calibrated": HubModel(
        "T5Config",
        "T5ForConditionalGeneration",
        {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 2, "num_heads": 4, "decoder_start_token_id": 0},
    ),
    "peft-internal-testing/tiny-random-BartForConditionalGeneration": HubModel(
        "BartConfig",
        "BartForConditionalGeneration",
        {
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
        },
    ),
    "peft-internal-testing/tiny-random-BertModel": HubModel("BertConfig", "BertModel", _BERT_LIKE),
    "peft-internal-testing/tiny-random-BertForSequenceClassification": HubModel(
        "BertConfig", "BertForSequenceClassification", _BERT_LIKE
    ),
    "peft-internal-testing/tiny-random-RobertaModel": HubModel("RobertaConfig", "RobertaModel", _BERT_LIKE),
    "peft-internal-testing/tiny-random-RobertaForSequenceClassification": HubModel(
        "RobertaConfig", "RobertaForSequenceClassification", _BERT_LIKE
    ),
    "peft-internal-testing/tiny-random-DebertaModel": HubModel("DebertaConfig", "DebertaModel", _BERT_LIKE),
    "peft-internal-testing/tiny-random-DebertaV2Model": HubModel("DebertaV2Config", "DebertaV2Model", _BERT_LIKE),
    "peft-internal-testing/tiny-random-ResNetForImageClassification": HubModel(
        "ResNetConfig",
        "ResNetForImageClassification",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "num_labels": 3},
        tokenizer=False,
        image_processor=True,
    ),
}


def revision(model_id: str) -> str:
    """A fixed 40-hex-digit commit name for ``model_id`` (what ``refs/main`` points at)."""
    return hashlib.sha1(f"peftkit-local-hub:{model_id}".encode()).hexdigest()


def snapshot_dir(cache: Path, model_id: str) -> Path:
    """``<cache>/models--<org>--<name>/snapshots/<revision>``: huggingface_hub's cache layout for a model repo."""
    return cache / ("models--" + model_id.replace("/", "--")) / "snapshots" / revision(model_id)


def build_tokenizer(target: Path, vocab_size: int) -> None:
    """Save a character-level fast tokenizer of ``vocab_size`` tokens: the special tokens (ids 0-3), the printable
    ASCII characters, then filler tokens; every character of a text maps to one id (unknown ones to ``<unk>``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = list(SPECIAL_TOKENS.values()) + [chr(c) for c in range(32, 127)]
    symbols += [f"<extra_{i}>" for i in range(vocab_size - len(symbols))]
    core = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS).save_pretrained(target)


def build_model(target: Path, spec: HubModel, seed: int = 0) -> None:
    """Save a randomly initialised ``spec.model_class`` (seed fixed) with its tokenizer or image processor."""
    import torch
    import transformers

    config = getattr(transformers, spec.config_class)(vocab_size=VOCAB, **SPECIAL_IDS, **spec.sizes)
    torch.manual_seed(seed)
    getattr(transformers, spec.model_class)(config).save_pretrained(target)
    if spec.tokenizer:
        build_tokenizer(target, VOCAB)
    if spec.image_processor:
        transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(target)


def build_hub(cache: Path, model_ids: list[str] | None = None) -> list[str]:
    """Build every id of :data:`MODELS` (or ``model_ids``) missing from ``cache``; return the ids built now.

    Raises:
        KeyError: an id that :data:`MODELS` does not describe.
    """
    built = []
    for model_id in model_ids or list(MODELS):
        spec = MODELS[model_id]
        repo = cache / ("models--" + model_id.replace("/", "--"))
        target = snapshot_dir(cache, model_id)
        if (repo / "refs" / "main").is_file() and (target / "config.json").is_file():
            continue
        staging = target.with_name(target.name + ".partial")  # a crash never leaves a half-built snapshot
        build_model(staging, spec)
        staging.rename(target)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision(model_id))
        built.append(model_id)
    return built


if __name__ == "__main__":
    for name in build_hub(Path(sys.argv[1]).resolve()):
        print("built", name)
