"""Trainable tokens against a formula oracle: the adapted model computes what the base model computes with rows
``token_indices`` of its embedding table replaced by the trained rows (also through a tied output head); merging
(exact unmerge), several adapters on disjoint tokens, disabling, deleting, training with the base bit-identical,
save/load and config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests._tiny import build_model
from tests.methods._training import adam_losses
from torch import nn

import peftkit as peft
from peftkit.methods.trainable_tokens.layer import TrainableTokensLayer

IDS = torch.tensor([[37, 43, 12, 8, 63, 9, 11], [5, 15, 0, 16, 1, 12, 7]])


def with_rows(base: nn.Module, rows: dict[int, torch.Tensor]) -> nn.Module:
    """The oracle: a copy of ``base`` whose input embedding rows are replaced (the tied head sees them too)."""
    oracle = copy.deepcopy(base)
    with torch.no_grad():
        for token, row in rows.items():
            oracle.get_input_embeddings().weight[token] = row
    return oracle


def adapter_rows(model: peft.PeftModel, name: str = "default") -> dict[int, torch.Tensor]:
    layer = model.get_base_model().get_input_embeddings()
    return dict(zip(layer.token_indices[name], layer.trainable_tokens_delta[name].detach(), strict=True))


def logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # gpt2: lm_head tied to wte
def test_forward_matches_the_model_with_replaced_rows(kind: str) -> None:
    base = build_model(kind)
    config = peft.TrainableTokensConfig(token_indices=[1, 12, 40], init_weights=False)
    model = peft.get_peft_model(build_model(kind), config)
    oracle = with_rows(base, adapter_rows(model))
    torch.testing.assert_close(logits(model), logits(oracle))
    assert not torch.allclose(logits(model), logits(base), atol=1e-3)
    head = model.get_base_model().get_output_embeddings()
    assert isinstance(head, TrainableTokensLayer) is (kind == "gpt2")
    if kind == "gpt2":  # one Parameter for both sides of the tie
        emb = model.get_base_model().get_input_embeddings()
        assert head.trainable_tokens_delta["default"] is emb.trainable_tokens_delta["default"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if "trainable_tokens_delta" in n
    ]


def test_merge_writes_the_rows_and_unmerge_restores_exactly() -> None:
    base = build_model("gpt2")
    model = peft.get_peft_model(
        build_model("gpt2"), peft.TrainableTokensConfig(token_indices=[1, 12], init_weights=False)
    )
    expected = logits(model)
    with pytest.warns(UserWarning, match="tied"):  # peftkit cuts a tie before writing into a shared table
        model.merge_adapter()
    torch.testing.assert_close(logits(model), expected)
    model.unmerge_adapter()
    assert torch.equal(model.get_base_model().get_input_embeddings().weight, base.get_input_embeddings().weight)
    merged = copy.deepcopy(model).merge_and_unload()
    torch.testing.assert_close(logits(merged), expected)


def test_several_adapters_disjoint_tokens_disable_and_delete() -> None:
    base = build_model("llama")
    model = peft.get_peft_model(build_model("llama"), peft.TrainableTokensConfig(token_indices=[1], init_weights=False))
    model.add_adapter("two", peft.TrainableTokensConfig(token_indices=[12, 5], init_weights=False))
    model.add_adapter("clash", peft.TrainableTokensConfig(token_indices=[5], init_weights=False))
    model.base_model.set_adapter(["default", "two"])
    both = {**adapter_rows(model), **adapter_rows(model, "two")}
    torch.testing.assert_close(logits(model), logits(with_rows(base, both)))
    model.base_model.set_adapter(["two", "clash"])
    with pytest.raises(peft.UsageError, match=r"both train tokens \[5\]"):
        logits(model)
    model.set_adapter("two")
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), logits(base))
    model.delete_adapter("clash")
    model.delete_adapter("two")
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(logits(model), logits(with_rows(base, adapter_rows(model))))


def test_deleting_the_last_adapter_unwraps_a_tied_head_too() -> None:
    model = peft.get_peft_model(build_model("gpt2"), peft.TrainableTokensConfig(token_indices=[1]))
    model.add_adapter("two", peft.TrainableTokensConfig(token_indices=[2]))
    model.delete_adapter("default")
    inner = model.get_base_model()
    assert isinstance(inner.lm_head, TrainableTokensLayer) and list(inner.lm_head.trainable_tokens_delta) == ["two"]
    unloaded = model.unload()
    assert type(unloaded.lm_head) is nn.Linear and unloaded.lm_head.weight is unloaded.transformer.wte.weight


def test_training_lowers_the_loss_keeps_the_base_and_round_trips(tmp_path: Path) -> None:
    base = build_model("gpt2")
    model = peft.get_peft_model(copy.deepcopy(base), peft.TrainableTokensConfig(token_indices=[1, 5, 12]))
    losses = adam_losses(model, lambda: model(input_ids=IDS, labels=IDS).loss, steps=20, lr=0.05)
    assert losses[-1] < 0.9 * losses[0]
    weight = model.get_base_model().get_input_embeddings().get_base_layer().weight
    assert torch.equal(weight, base.get_input_embeddings().weight)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert isinstance(loaded.base_model, peft.TrainableTokensModel)
    torch.testing.assert_close(logits(loaded), logits(model.eval()))


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(peft.ConfigError, match="token_indices is empty"):  # a valid config until injected
        peft.get_peft_model(build_model("llama"), peft.TrainableTokensConfig(token_indices=[]))
    with pytest.raises(peft.ConfigError, match="non-empty list"):
        peft.TrainableTokensConfig(token_indices=[-1])
    with pytest.raises(peft.ConfigError, match="twice"):
        peft.TrainableTokensConfig(token_indices=[3, 3])
    with pytest.raises(peft.ConfigError, match="outside the embedding table of 64 rows"):
        peft.get_peft_model(build_model("llama"), peft.TrainableTokensConfig(token_indices=[64]))
    with pytest.raises(peft.TargetingError, match="cannot adapt"):
        peft.get_peft_model(
            build_model("llama"), peft.TrainableTokensConfig(token_indices=[1], target_modules=["q_proj"])
        )
