"""Resized vocabularies (PEFT's ``save_embedding_layers="auto"``): when the model's vocabulary differs from its
base model's ``config.json``, the input and output embedding layers are saved with the adapter, and a reload on
a base resized the same way (whose new rows are initialised at random) gives the same outputs."""

from __future__ import annotations

import warnings
from types import ModuleType

import peft as reference
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import peftkit

LIBS: dict[str, ModuleType] = {"peft": reference, "peftkit": peftkit}
BASE_VOCAB, NEW_VOCAB = 64, 72


@pytest.fixture(params=[False, True], ids=["untied", "tied"])
def base_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=BASE_VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=request.param,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def resized(base_dir, seed: int) -> LlamaForCausalLM:
    model = LlamaForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)  # the new rows are drawn at random: each resize gives other ones
    model.resize_token_embeddings(NEW_VOCAB)
    return model.eval()


def adapted(lib: ModuleType, base_dir) -> torch.nn.Module:
    config = lib.LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return lib.get_peft_model(resized(base_dir, seed=1), config).eval()


NEW_IDS = torch.tensor([[64, 70, 3, 71, 65]])


@pytest.mark.parametrize("source, target", [("peftkit", "peftkit"), ("peft", "peftkit"), ("peftkit", "peft")])
@torch.no_grad()
def test_resized_embeddings_are_saved_and_reload_exactly(tmp_path, base_dir, source, target) -> None:
    model = adapted(LIBS[source], base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(tmp_path)
    assert any("resized" in str(w.message) for w in caught)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert {"base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"} <= keys
    other = resized(base_dir, seed=2)
    assert not torch.allclose(
        other.get_input_embeddings().weight[BASE_VOCAB:], model.get_input_embeddings().weight[BASE_VOCAB:]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = LIBS[target].PeftModel.from_pretrained(other, tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids=NEW_IDS).logits, model(input_ids=NEW_IDS).logits, atol=1e-5, rtol=0)


def test_same_keys_as_peft(tmp_path, base_dir) -> None:
    for name, lib in LIBS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapted(lib, base_dir).save_pretrained(tmp_path / name)
    ours, theirs = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("peftkit", "peft"))
    assert ours.keys() == theirs.keys()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_unresized_vocabulary_saves_no_embeddings(tmp_path, base_dir) -> None:
    model = peftkit.get_peft_model(
        LlamaForCausalLM.from_pretrained(base_dir), peftkit.LoraConfig(target_modules=["q_proj"])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save_pretrained(tmp_path)
    assert all("lora_" in key for key in load_file(tmp_path / "adapter_model.safetensors"))
