"""LoRA on a scaled embedding (Gemma 3's ``embed_scale = sqrt(hidden_size)``): the adapter's delta goes through
the same scale as the base lookup, so merged equals unmerged and adapters move between peft and peftkit with
the same outputs."""

from __future__ import annotations

import warnings
from types import ModuleType

import peft as reference
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

import peftkit

LIBS: dict[str, ModuleType] = {"peft": reference, "peftkit": peftkit}
FIELDS = {"target_modules": ["embed_tokens", "q_proj"], "r": 4, "lora_alpha": 8, "init_lora_weights": False}


def gemma3() -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=64, sliding_window=8, tie_word_embeddings=False,
    )  # fmt: skip
    return Gemma3ForCausalLM(config).eval()


def ids() -> torch.Tensor:
    return torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def test_the_model_really_scales_its_embedding() -> None:
    embedding = gemma3().get_input_embeddings()
    torch.testing.assert_close(float(embedding.embed_scale), 64**0.5)


@torch.no_grad()
def test_merged_equals_unmerged_and_the_delta_is_scaled() -> None:
    model = peftkit.get_peft_model(gemma3(), peftkit.LoraConfig(**FIELDS)).eval()
    layer = model.base_model.model.model.embed_tokens
    x = ids()
    expected_embeds = (layer.base_layer.weight + layer.delta_weight("default"))[x] * 64**0.5
    torch.testing.assert_close(layer(x), expected_embeds)
    unmerged = model(input_ids=x).logits
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=x).logits, unmerged, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    merged = model.merge_and_unload()(input_ids=x).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source, target", [("peft", "peftkit"), ("peftkit", "peft")])
@torch.no_grad()
def test_adapters_move_between_libraries_with_equal_outputs(tmp_path, source, target) -> None:
    saved = LIBS[source].get_peft_model(gemma3(), LIBS[source].LoraConfig(**FIELDS)).eval()
    saved.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft notes that it saves the embedding layer's base weights
        loaded = LIBS[target].PeftModel.from_pretrained(gemma3(), tmp_path).eval()
    x = ids()
    embeds = saved.get_input_embeddings()(x)
    assert not torch.allclose(embeds, gemma3().get_input_embeddings()(x), atol=1e-3)
    torch.testing.assert_close(loaded.get_input_embeddings()(x), embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loaded(input_ids=x).logits, saved(input_ids=x).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_mixed_batch_rows_equal_single_adapter_runs() -> None:
    model = peftkit.get_peft_model(gemma3(), peftkit.LoraConfig(**FIELDS))
    model.add_adapter("other", peftkit.LoraConfig(**FIELDS))
    model.eval()
    x = ids()
    names = ["other", "default"]
    mixed = model(input_ids=x, adapter_names=names).logits
    for row, name in enumerate(names):
        model.set_adapter(name)
        torch.testing.assert_close(mixed[row : row + 1], model(input_ids=x[row : row + 1]).logits, atol=1e-5, rtol=1e-5)
