"""Layer edge cases of one kind: calls with keyword arguments only, biases of layers that have none, and
``safe_merge`` refusing a non-finite value in every tensor a merge adds."""

from __future__ import annotations

from typing import Any

import peft as reference
import pytest
import torch
from torch import nn

import peftkit as peft
from peftkit.errors import PeftkitError


class KeywordCalls(nn.Module):
    """Every submodule is called with keyword arguments only (``input=`` is ``nn.Linear``'s parameter name)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input=ids)
        return self.head(input=torch.tanh(self.proj(input=h)))


def _keyword_model() -> KeywordCalls:
    torch.manual_seed(0)
    return KeywordCalls().eval()


def test_modules_to_save_and_adapter_layers_accept_keyword_only_calls() -> None:
    ids = torch.randint(0, 10, (4, 5))
    config = peft.LoraConfig(target_modules=["proj", "embed"], modules_to_save=["head"], init_lora_weights=False)
    model = peft.get_peft_model(_keyword_model(), config).eval()
    with torch.no_grad():
        model.base_model.model.head.modules_to_save["default"].weight.add_(0.5)
    out = model(ids)
    plain = model.merge_and_unload()  # the same maths without any wrapper
    torch.testing.assert_close(out, plain(ids))


def test_mixed_batch_through_keyword_calls_matches_single_adapter_runs() -> None:
    ids = torch.randint(0, 10, (4, 5))
    config = peft.LoraConfig(target_modules=["proj"], modules_to_save=["head"], init_lora_weights=False)
    model = peft.get_peft_model(_keyword_model(), config)
    model.add_adapter("other", config)
    with torch.no_grad():
        model.base_model.model.head.modules_to_save["other"].weight.mul_(-2.0)
    model.eval()
    names = ["default", "other", "__base__", "other"]
    mixed = model(ids, adapter_names=names)
    for row, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                expected = model(ids[row : row + 1])
        else:
            model.set_adapter(name)
            expected = model(ids[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], expected)


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_lora_only_bias_with_an_adapted_embedding_trains_what_peft_trains(toy) -> None:
    fields = {"target_modules": ["embed_tokens", "q_proj"], "bias": "lora_only", "init_lora_weights": False}
    ours = peft.get_peft_model(toy(), peft.LoraConfig(**fields))
    theirs = reference.get_peft_model(toy(), reference.LoraConfig(**fields))
    assert _trainable(ours) == _trainable(theirs)
    assert "base_model.model.layers.0.q_proj.base_layer.bias" in _trainable(ours)
    saved_biases = {k for k in ours.get_adapter_state_dict() if k.endswith("bias")}
    assert saved_biases == {k for k in reference.get_peft_model_state_dict(theirs) if k.endswith("bias")}


def _poison(value: float, path: str) -> Any:
    def apply(model: nn.Module) -> None:
        with torch.no_grad():
            model.get_submodule(path.rsplit(".", 1)[0]).get_parameter(path.rsplit(".", 1)[1]).view(-1)[0] = value

    return apply


_Q = "base_model.model.layers.0.q_proj"
SAFE_MERGE_CASES = {
    "lora_B": (peft.LoraConfig(target_modules=["q_proj"]), f"{_Q}.lora_B.default.weight"),
    "lora_bias": (peft.LoraConfig(target_modules=["q_proj"], lora_bias=True), f"{_Q}.lora_B.default.bias"),
    "dora_magnitude": (
        peft.LoraConfig(target_modules=["q_proj"], use_dora=True),
        f"{_Q}.lora_magnitude_vector.default.weight",
    ),
    "embedding_B": (
        peft.LoraConfig(target_modules=["embed_tokens"]),
        "base_model.model.embed_tokens.lora_embedding_B.default",
    ),
    "ia3_attention": (
        peft.IA3Config(target_modules=["q_proj"], feedforward_modules=[]),
        f"{_Q}.ia3_l.default",
    ),
    "ia3_feedforward": (
        peft.IA3Config(target_modules=["q_proj"], feedforward_modules=["q_proj"]),
        f"{_Q}.ia3_l.default",
    ),
    "adalora_E": (peft.AdaLoraConfig(target_modules=["q_proj"], total_step=10), f"{_Q}.lora_E.default"),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("case", list(SAFE_MERGE_CASES))
def test_safe_merge_refuses_non_finite_values_in_every_added_tensor(toy, case, value) -> None:
    config, path = SAFE_MERGE_CASES[case]
    model = peft.get_peft_model(toy(), config)
    _poison(value, path)(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]

    def check() -> None:
        assert [type(m) for m in model.modules()] == modules
        for key, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, before[key], rtol=0, atol=0, equal_nan=True)

    with pytest.raises(PeftkitError, match="NaN/Inf"):
        model.merge_adapter(safe_merge=True)
    check()
    with pytest.raises(PeftkitError, match="NaN/Inf"):
        model.merge_and_unload(safe_merge=True)
    check()
