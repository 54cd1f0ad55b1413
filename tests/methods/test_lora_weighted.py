"""``add_weighted_adapter`` (LoRA and IA3) against short formulas, its new adapter's config and state, and its
errors (peftkit's exceptions, the model left as it was)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import peftkit as peft
from peftkit.errors import AdapterNameError, ConfigError, UsageError

TARGETS = ["emb", "lin", "conv1", "conv2"]


class Net(nn.Module):
    """One layer of each kind LoRA adapts; ``ids (N, 3) -> (N, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.lin = nn.Linear(6, 5)
        self.conv1 = nn.Conv1d(6, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, (1, 3), padding=(0, 1))
        self.head = nn.Linear(6, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.emb(ids).transpose(1, 2))  # (N, 6, L)
        h = self.conv2(h.unsqueeze(2)).squeeze(2).mean(-1)  # (N, 6)
        return self.lin(h) + self.head(h)


def two_adapters(r: tuple[int, int] = (2, 3), **extra: object) -> peft.PeftModel:
    torch.manual_seed(0)
    model = peft.get_peft_model(
        Net(), peft.LoraConfig(r=r[0], lora_alpha=3, target_modules=TARGETS, init_lora_weights=False, **extra), "one"
    )
    model.add_adapter("two", peft.LoraConfig(r=r[1], lora_alpha=5, target_modules=["lin", "conv1", "emb"], **extra))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.normal_(std=0.3)
    return model


def layers(model: peft.PeftModel) -> dict[str, nn.Module]:
    return {name: model.base_model.model.get_submodule(name) for name in TARGETS}


def expected_delta(layer: nn.Module, weights: dict[str, float]) -> torch.Tensor:
    """Oracle of the exact types: sum_i w_i s_i B_i A_i (over the adapters the layer holds)."""
    return sum(w * layer.get_delta_weight(a) for a, w in weights.items() if a in layer.scaling)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["cat", "svd"])
def test_exact_types_reproduce_the_weighted_sum_of_deltas(kind: str) -> None:
    model = two_adapters()
    weights = {"one": 0.8, "two": -1.3}
    model.add_weighted_adapter(list(weights), list(weights.values()), "mix", kind, svd_rank=5)
    config = model.peft_config["mix"]
    assert config.r == config.lora_alpha == 5  # cat: 2 + 3; svd: svd_rank
    assert set(config.target_modules) == set(TARGETS)
    for name, layer in layers(model).items():
        assert layer.scaling["mix"] == 1.0, name
        torch.testing.assert_close(layer.get_delta_weight("mix"), expected_delta(layer, weights), atol=1e-4, rtol=1e-4)


def test_linear_combines_the_factors_with_square_root_weights() -> None:
    model = two_adapters(r=(3, 3))
    model.add_weighted_adapter(["one", "two"], [0.5, -2.0], "mix", "linear")
    lin = layers(model)["lin"]
    root = {a: math.sqrt(abs(w * lin.scaling[a])) for a, w in (("one", 0.5), ("two", -2.0))}
    A = root["one"] * lin.lora_A["one"].weight - root["two"] * lin.lora_A["two"].weight
    B = root["one"] * lin.lora_B["one"].weight + root["two"] * lin.lora_B["two"].weight
    torch.testing.assert_close(lin.lora_A["mix"].weight, A)
    torch.testing.assert_close(lin.lora_B["mix"].weight, B)


def test_svd_truncates_to_the_best_rank_r_approximation() -> None:
    model = two_adapters()
    model.add_weighted_adapter(["one", "two"], [1.0, 1.0], "mix", "svd", svd_rank=2)
    for name, layer in layers(model).items():
        delta = expected_delta(layer, {"one": 1.0, "two": 1.0})
        matrix = delta.T if name == "emb" else delta.flatten(1)
        U, S, Vh = torch.linalg.svd(matrix)
        best = (U[:, :2] * S[:2] @ Vh[:2]).T if name == "emb" else (U[:, :2] * S[:2] @ Vh[:2]).view_as(delta)
        torch.testing.assert_close(layer.get_delta_weight("mix"), best, atol=1e-4, rtol=1e-4)


def test_rslora_sources_give_a_scaling_of_one() -> None:
    model = two_adapters(use_rslora=True)
    model.add_weighted_adapter(["one", "two"], [1.0, 0.5], "mix", "cat")
    assert model.peft_config["mix"].use_rslora is False
    lin = layers(model)["lin"]
    torch.testing.assert_close(lin.get_delta_weight("mix"), expected_delta(lin, {"one": 1.0, "two": 0.5}))


def test_combined_adapter_is_frozen_inactive_and_trains_like_any_adapter() -> None:
    model = two_adapters()
    model.add_weighted_adapter(["one", "two"], [1.0, 1.0], "mix", "cat")
    assert model.active_adapter == "one"
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mix." in n)
    ids = torch.randint(0, 10, (4, 3))
    model.set_adapter("mix")
    base = {k: v.clone() for k, v in model.named_parameters() if "base_layer" in k}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(5):
        loss = model(ids).pow(2).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in base.items())


def test_an_existing_name_changes_nothing_with_a_warning() -> None:
    model = two_adapters()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="already exists"):
        model.add_weighted_adapter(["one", "two"], [1.0, 1.0], "two", "cat")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"combination_type": "linear"}, ConfigError, "one rank"),
        ({"combination_type": "ties", "density": 0.5}, ConfigError, "one rank"),
        ({"combination_type": "median"}, ConfigError, "Unknown combination_type"),
        ({"combination_type": "ties_svd"}, ConfigError, "needs density"),
        ({"combination_type": "dare_linear_svd", "density": 1.5}, ConfigError, "needs density"),
        ({"combination_type": "ties_svd", "density": 0.5, "majority_sign_method": "mean"}, ConfigError, "majority"),
        ({"combination_type": "svd", "svd_rank": 7}, UsageError, "svd_rank 7 exceeds"),
        ({"adapters": ["one", "nope"]}, AdapterNameError, "nope"),
        ({"weights": [1.0]}, UsageError, "2 adapters but 1 weights"),
        ({"adapters": [], "weights": []}, UsageError, "at least one adapter"),
    ],
)
def test_bad_inputs_raise_and_leave_the_model_unchanged(kwargs: dict, error: type, match: str, unchanged) -> None:  # type: ignore[no-untyped-def]
    model = two_adapters()
    args = {"adapters": ["one", "two"], "weights": [1.0, 1.0], "adapter_name": "mix", **kwargs}
    check = unchanged(model)
    with pytest.raises(error, match=match):
        model.add_weighted_adapter(**args)
    check()
    assert "mix" not in model.peft_config


def test_mixed_regex_and_list_targets_and_shared_modules_to_save_are_refused() -> None:
    torch.manual_seed(0)
    model = peft.get_peft_model(Net(), peft.LoraConfig(target_modules=["lin"], modules_to_save=["head"]), "one")
    model.add_adapter("two", peft.LoraConfig(target_modules=r".*conv1", modules_to_save=["head"]))
    model.add_adapter("three", peft.LoraConfig(target_modules=r".*conv2"))
    with pytest.raises(UsageError, match="modules_to_save copy of the same module"):
        model.add_weighted_adapter(["one", "two"], [1.0, 1.0], "mix", "cat")
    with pytest.raises(ConfigError, match="mix a list of names and a regex"):
        model.add_weighted_adapter(["one", "three"], [1.0, 1.0], "mix", "cat")
    model.add_weighted_adapter(["two", "three"], [1.0, 1.0], "mix", "cat")
    assert model.peft_config["mix"].target_modules == r"(.*conv1)|(.*conv2)"


def test_ia3_weighted_sum_of_vectors() -> None:
    torch.manual_seed(0)
    config = peft.IA3Config(target_modules=["lin", "conv1"], feedforward_modules=["conv1"], init_ia3_weights=False)
    model = peft.get_peft_model(Net(), config, "one")
    model.add_adapter("two", peft.IA3Config(target_modules=["lin"], feedforward_modules=[], init_ia3_weights=False))
    model.add_weighted_adapter(["one", "two"], [0.25, 2.0], "mix")
    lin, conv1 = layers(model)["lin"], layers(model)["conv1"]
    torch.testing.assert_close(lin.ia3_l["mix"], 0.25 * lin.ia3_l["one"] + 2.0 * lin.ia3_l["two"])
    torch.testing.assert_close(conv1.ia3_l["mix"], 0.25 * conv1.ia3_l["one"])
    assert model.peft_config["mix"].feedforward_modules == {"conv1"}
