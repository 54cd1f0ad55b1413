"""Merging adapters on layers whose weight is tied to another module (``tie_word_embeddings``): the merge must
not change the other module. Right value: merged outputs equal unmerged ones, with a warning saying the layer
got its own copy of the weight, for every method that merges into a weight and both sides of the tie."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import peftkit


def tied_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


CONFIGS = {
    "lora_lm_head": lambda: peftkit.LoraConfig(target_modules=["lm_head"], r=4, init_lora_weights=False),
    "lora_embed": lambda: peftkit.LoraConfig(target_modules=["embed_tokens"], r=4, init_lora_weights=False),
    "lora_both": lambda: peftkit.LoraConfig(target_modules=["embed_tokens", "lm_head"], init_lora_weights=False),
    "dora_lm_head": lambda: peftkit.LoraConfig(target_modules=["lm_head"], use_dora=True, init_lora_weights=False),
    "ia3_lm_head": lambda: peftkit.IA3Config(
        target_modules=["lm_head"], feedforward_modules=[], init_ia3_weights=False
    ),
}
IDS = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", sorted(CONFIGS))
@torch.no_grad()
def test_merge_and_unload_equals_unmerged_and_warns(case, tmp_path) -> None:
    model = peftkit.get_peft_model(tied_llama(), CONFIGS[case]()).eval()
    unmerged = model(input_ids=IDS).logits
    assert not torch.allclose(unmerged, tied_llama()(input_ids=IDS).logits, atol=1e-3)
    with pytest.warns(UserWarning, match=r"tied weights .*own copy of the weight and config.tie_word_embeddings"):
        merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=IDS).logits, unmerged, atol=1e-4, rtol=1e-4)
    if case.endswith("lm_head"):
        torch.testing.assert_close(
            merged.model.embed_tokens.weight, tied_llama().model.embed_tokens.weight, rtol=0, atol=0
        )
    merged.save_pretrained(tmp_path)  # the untied model stays untied when reloaded
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(input_ids=IDS).logits, unmerged, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_merge_adapter_then_unmerge_restores_the_outputs() -> None:
    model = peftkit.get_peft_model(tied_llama(), CONFIGS["lora_lm_head"]()).eval()
    unmerged = model(input_ids=IDS).logits
    with pytest.warns(UserWarning, match="tied weights"):
        model.merge_adapter()
    torch.testing.assert_close(model(input_ids=IDS).logits, unmerged, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(model(input_ids=IDS).logits, unmerged, atol=1e-4, rtol=1e-4)
    with model.disable_adapter():
        torch.testing.assert_close(model(input_ids=IDS).logits, tied_llama()(input_ids=IDS).logits, atol=1e-5, rtol=0)


# -- ensure_weight_tying (PEFT's option): both sides of the tie adapted with one set of factors -----------------
def untied_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tied_llama().config
    config.tie_word_embeddings = False
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("targets", [["lm_head"], ["embed_tokens"]])
@torch.no_grad()
def test_ensure_weight_tying_adapts_both_sides_with_one_set_of_factors(targets) -> None:
    config = peftkit.LoraConfig(target_modules=targets, r=4, init_lora_weights=False, ensure_weight_tying=True)
    model = peftkit.get_peft_model(tied_llama(), config).eval()
    inner = model.base_model.model
    embed, head = inner.model.embed_tokens, inner.lm_head
    assert head.lora_A["default"].weight.data_ptr() == embed.lora_embedding_B["default"].data_ptr()
    assert head.lora_B["default"].weight.data_ptr() == embed.lora_embedding_A["default"].data_ptr()
    torch.testing.assert_close(head.delta_weight("default"), embed.delta_weight("default"))  # one adapted table
    table = embed.base_layer.weight + embed.delta_weight("default")
    hidden = inner.model(input_ids=IDS).last_hidden_state
    torch.testing.assert_close(model(input_ids=IDS).logits, hidden @ table.T, atol=1e-5, rtol=1e-5)
    unmerged = model(input_ids=IDS).logits
    with pytest.warns(UserWarning, match="tied weights"):
        merged = model.merge_and_unload()  # the reference merges the delta twice into the shared table here
    torch.testing.assert_close(merged(input_ids=IDS).logits, unmerged, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("source, target", [("peft", "peftkit"), ("peftkit", "peft")])
@torch.no_grad()
def test_ensure_weight_tying_adapters_move_between_libraries(tmp_path, source, target) -> None:
    import warnings

    import peft as reference

    libs = {"peft": reference, "peftkit": peftkit}
    config = libs[source].LoraConfig(target_modules=["lm_head"], init_lora_weights=False, ensure_weight_tying=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = libs[source].get_peft_model(tied_llama(), config).eval()
        saved.save_pretrained(tmp_path)
        loaded = libs[target].PeftModel.from_pretrained(tied_llama(), tmp_path).eval()
    expected = saved(input_ids=IDS).logits
    assert not torch.allclose(expected, tied_llama()(input_ids=IDS).logits, atol=1e-3)
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, atol=1e-5, rtol=1e-5)


def test_ensure_weight_tying_without_tied_weights_warns() -> None:
    config = peftkit.LoraConfig(target_modules=["lm_head"], ensure_weight_tying=True)
    with pytest.warns(UserWarning, match="no tied embeddings"):
        peftkit.get_peft_model(untied_llama(), config)
