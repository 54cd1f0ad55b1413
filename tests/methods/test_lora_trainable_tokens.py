"""``LoraConfig(trainable_token_indices=...)`` against a formula oracle: with LoRA's ``B = 0`` the adapted model
computes what the base model computes with the chosen embedding rows replaced (through a tied head too); merging
(exact unmerge), an adapter without tokens beside one with them, disabling, deleting, training with the base
bit-identical, save/load and config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests._tiny import build_model
from tests.methods._training import adam_losses
from torch import nn

import peftkit as peft
from peftkit.methods.trainable_tokens.wrapper import TiedTokensWrapper, TrainableTokensWrapper

IDS = torch.tensor([[37, 43, 12, 8, 63, 9, 11], [5, 15, 0, 16, 1, 12, 7]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def tokens_model(kind: str, indices: object, adapter: str = "default", base: nn.Module | None = None) -> peft.PeftModel:
    """LoRA with ``B = 0`` (the identity) and random trained rows."""
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj"]
    config = peft.LoraConfig(r=2, target_modules=targets, trainable_token_indices=indices)
    model = peft.get_peft_model(base if base is not None else build_model(kind), config, adapter_name=adapter)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "trainable_tokens_delta" in name and param.requires_grad:
                param.copy_(torch.randn(param.shape))
    return model


def oracle(kind: str, model: peft.PeftModel, adapter: str = "default") -> nn.Module:
    """The base model with each wrapped table's rows replaced by the adapter's."""
    out = build_model(kind)
    with torch.no_grad():
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, TrainableTokensWrapper) and not isinstance(module, TiedTokensWrapper):
                layer = module.token_adapter
                rows = layer.trainable_tokens_delta[adapter]
                out.get_submodule(name).weight[layer.token_indices[adapter]] = rows
    return out


@pytest.mark.parametrize(
    ("kind", "indices"),
    [("gpt2", [1, 12]), ("llama", [1, 12]), ("llama", {"embed_tokens": [12], "lm_head": [5, 9]})],
    ids=["gpt2_tied", "llama", "llama_embedding_and_head"],
)
def test_forward_matches_the_base_with_replaced_rows(kind: str, indices: object) -> None:
    model = tokens_model(kind, indices)
    torch.testing.assert_close(logits(model), logits(oracle(kind, model)))
    assert not torch.allclose(logits(model), logits(build_model(kind)), atol=1e-3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum("trainable_tokens_delta" in n for n in trainable) == (1 if isinstance(indices, list) else 2)
    head = model.get_base_model().get_output_embeddings()
    assert isinstance(head, TiedTokensWrapper) is (kind == "gpt2")


def test_merge_and_unmerge_are_exact_and_unload_restores_the_modules() -> None:
    base = build_model("gpt2")
    model = tokens_model("gpt2", [1, 12])
    expected = logits(model)
    with pytest.warns(UserWarning, match="tied"):
        model.merge_adapter()
    torch.testing.assert_close(logits(model), expected)
    model.unmerge_adapter()
    assert torch.equal(model.get_base_model().transformer.wte.weight, base.transformer.wte.weight)
    merged = copy.deepcopy(model).merge_and_unload()
    assert type(merged.transformer.wte) is nn.Embedding and type(merged.lm_head) is nn.Linear
    torch.testing.assert_close(logits(merged), expected)
    plain = model.unload()
    assert type(plain.transformer.wte) is nn.Embedding and type(plain.lm_head) is nn.Linear


def test_an_adapter_without_tokens_disable_and_delete() -> None:
    base = build_model("llama")
    model = tokens_model("llama", [1, 12])
    model.add_adapter("plain", peft.LoraConfig(r=2, target_modules=["q_proj"]))
    model.set_adapter("plain")
    torch.testing.assert_close(logits(model), logits(base))  # B = 0 and no token rows
    model.set_adapter("default")
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), logits(base))
    expected = logits(oracle("llama", model))
    model.delete_adapter("plain")
    torch.testing.assert_close(logits(model), expected)
    model.add_adapter("other", peft.LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[5]))
    model.delete_adapter("default")
    assert list(model.get_base_model().model.embed_tokens.token_adapter.token_indices) == ["other"]


def test_training_lowers_the_loss_keeps_the_base_and_round_trips(tmp_path: Path) -> None:
    base = build_model("gpt2")
    model = tokens_model("gpt2", [1, 5, 12], base=copy.deepcopy(base))
    losses = adam_losses(model, lambda: model(input_ids=IDS, labels=IDS).loss, steps=20, lr=0.02)
    assert losses[-1] < 0.9 * losses[0]
    assert torch.equal(model.get_base_model().transformer.wte.weight, base.transformer.wte.weight)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model.eval()))


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(peft.ConfigError, match="twice"):
        peft.LoraConfig(trainable_token_indices=[1, 1])
    with pytest.raises(peft.ConfigError, match=r"trainable_token_indices\['wte'\]"):
        peft.LoraConfig(trainable_token_indices={"wte": []})
    with pytest.raises(peft.ConfigError, match="no module of that name"):
        tokens_model("llama", {"wte": [1]})
    with pytest.raises(peft.ConfigError, match="outside"):
        tokens_model("llama", [64])
    with pytest.raises(peft.ConfigError, match="not an embedding"):
        tokens_model("llama", {"input_layernorm": [1]})
    with pytest.raises(peft.ConfigError, match=r"trainable_token_indices=\[1\] is a PEFT feature"):
        peft.AdaLoraConfig(total_step=10, trainable_token_indices=[1])
    config = peft.LoraConfig(
        target_modules=["q_proj"], modules_to_save=["lm_head"], trainable_token_indices={"lm_head": [1]}
    )
    with pytest.raises(peft.ConfigError, match="modules_to_save"):
        peft.get_peft_model(build_model("llama"), config)
    model = build_model("llama")
    with pytest.raises(peft.ConfigError, match="outside"):
        tokens_model("llama", [1, 64], base=model)
    assert type(model.model.embed_tokens) is nn.Embedding  # nothing left half-done
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
