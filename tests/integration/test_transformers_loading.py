"""from_pretrained detection of adapter directories: peftkit's Auto classes (no opt-in), transformers' model
classes, Auto classes and pipeline (after the opt-in), and a directory holding a full model and an adapter."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tests._tiny import VOCAB, inputs_for, output_of, tiny_bert_cls, tiny_llama, tiny_t5
from tests.integration._transformers_fixtures import (  # noqa: F401 (fixture)
    lora,
    patched,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import peftkit

CASES = [
    ("AutoModelForCausalLM", tiny_llama),
    ("AutoModelForSeq2SeqLM", tiny_t5),
    ("AutoModelForSequenceClassification", tiny_bert_cls),
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words ``t0 .. t63`` (one id per word)."""
    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", pad_token="t0", eos_token="t2")


def save_base_and_adapter(build, tmp_path, adapter_dir: str = "adapter"):
    """Save a base model, load it back, add an adapter in place and save it; returns the adapted model."""
    build().save_pretrained(tmp_path / "base")
    model = peftkit.enable_adapter_methods(type(build()).from_pretrained(tmp_path / "base"))
    model.add_adapter(lora())
    model.save_pretrained(tmp_path / adapter_dir)
    return model


@pytest.mark.parametrize(("auto", "build"), CASES)
def test_peftkit_auto_classes_detect_adapters(auto: str, build, tmp_path) -> None:
    adapted = save_base_and_adapter(build, tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    loaded = getattr(peftkit, auto).from_pretrained(tmp_path / "adapter")
    assert type(loaded).__name__ == type(adapted).__name__ and loaded.active_adapters() == ["default"]
    x = inputs_for(adapted)
    torch.testing.assert_close(output_of(loaded, x), output_of(adapted, x))
    trainable = getattr(peftkit, auto).from_pretrained(tmp_path / "adapter", adapter_name="t", is_trainable=True)
    assert trainable.active_adapters() == ["t"] and any(p.requires_grad for p in trainable.parameters())
    plain = getattr(peftkit, auto).from_pretrained(tmp_path / "base")
    torch.testing.assert_close(output_of(plain, x), output_of(build(), x))
    plain.add_adapter(lora())  # the methods are there without the opt-in


@pytest.mark.parametrize(("auto", "build"), CASES)
def test_transformers_classes_detect_adapters_after_opt_in(patched, auto: str, build, tmp_path) -> None:  # noqa: F811
    adapted = save_base_and_adapter(build, tmp_path)
    x = inputs_for(adapted)
    for cls in (getattr(transformers, auto), type(build())):
        loaded = cls.from_pretrained(tmp_path / "adapter")
        assert loaded.active_adapters() == ["default"] and not loaded.training
        torch.testing.assert_close(output_of(loaded, x), output_of(adapted, x))


def test_full_model_beside_adapter_loads_the_local_model(patched, tmp_path) -> None:  # noqa: F811
    both = tmp_path / "both"
    tiny_llama(seed=3).save_pretrained(both)  # the local full model, not the one the adapter names
    model = peftkit.enable_adapter_methods(tiny_llama(seed=3))
    model.add_adapter(lora())
    model.save_pretrained(both)
    config = json.loads((both / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/not-a-model"
    (both / "adapter_config.json").write_text(json.dumps(config))
    x = inputs_for(model)
    for loaded in (
        peftkit.AutoModelForCausalLM.from_pretrained(both),
        transformers.AutoModelForCausalLM.from_pretrained(both),
    ):
        torch.testing.assert_close(output_of(loaded, x), output_of(model, x))


def test_missing_base_name_is_a_clear_error(tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())  # built from a config: no name to record
    model.add_adapter(lora())
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(peftkit.ConfigError, match="no base_model_name_or_path"):
        peftkit.AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")


def test_pipeline_detects_adapters_after_opt_in(patched, tmp_path) -> None:  # noqa: F811
    adapted = save_base_and_adapter(tiny_llama, tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "adapter")
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "adapter"))
    assert pipe.model.active_adapters() == ["default"]
    prompt = "t5 t9 t17 t33"
    ids = torch.tensor([tiny_tokenizer()(prompt)["input_ids"]])
    adapted.eval()
    expected = adapted.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    generated = pipe(prompt, max_new_tokens=4, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert generated.split() == [f"t{i}" for i in expected[0, ids.shape[1] :].tolist()]
