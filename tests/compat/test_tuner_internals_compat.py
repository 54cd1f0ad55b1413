"""PEFT's tuner internals that libraries and PEFT's own tests read, each against the reference peft 0.21.2:
``targeted_module_names`` / ``targeted_parameter_names`` (after injection, after a second adapter, after a load),
``BaseTuner.get_model_config``, ``_get_tuner_state_dict_key_prefixes`` / ``_filter_state_dict_by_key_prefixes``
and ``_find_minimal_target_modules`` (its results and its refusals)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import peft
import peft.tuners.tuners_utils as theirs_utils
import pytest
import torch
from peft.utils.constants import DUMMY_MODEL_CONFIG as THEIR_DUMMY
from torch import nn

import peftkit
import peftkit.tuners.tuners_utils as ours_utils
from peftkit.utils.constants import DUMMY_MODEL_CONFIG


class Net(nn.Module):
    """Two blocks of two Linears, an embedding, a head: names with layer indices, a tied-free toy."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.layers = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(8, 8), "down": nn.Linear(8, 8)}) for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for block in self.layers:
            h = block["down"](torch.relu(block["up"](h)))
        return self.head(h)


def _both(build: Any) -> tuple[Any, Any]:
    """``build(lib)`` for peftkit and the reference, each on the same freshly seeded model."""
    made = []
    for lib in (peftkit, peft):
        torch.manual_seed(0)
        made.append(build(lib, Net()))
    return made[0], made[1]


CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("LoraConfig", {"target_modules": r"layers\.\d\.(up|down)"}),
    ("LoraConfig", {"target_modules": ["up", "head"]}),
    ("LoraConfig", {"target_modules": ["up", "down"], "exclude_modules": ["layers.0.up"]}),
    ("LoraConfig", {"target_modules": ["up", "down"], "layers_to_transform": [1], "layers_pattern": "layers"}),
    ("LoraConfig", {"target_modules": ["up"], "modules_to_save": ["head"]}),
    ("LoraConfig", {"target_modules": [], "target_parameters": ["up.weight", "layers.1.down.weight"]}),
    ("LoraConfig", {"target_modules": ["emb", "down"]}),
    ("IA3Config", {"target_modules": ["up", "down"], "feedforward_modules": ["down"]}),
    ("LoHaConfig", {"target_modules": ".*down"}),
]


@pytest.mark.parametrize(("kind", "options"), CONFIGS)
def test_targeted_names_match_reference(kind: str, options: dict[str, Any]) -> None:
    ours, ref = _both(lambda lib, net: lib.get_peft_model(net, getattr(lib, kind)(**options)))
    assert ours.targeted_module_names == ref.targeted_module_names
    assert ours.targeted_parameter_names == ref.targeted_parameter_names
    assert ours.base_model.targeted_module_names == ref.base_model.targeted_module_names


def test_targeted_names_accumulate_over_adapters_and_loads(tmp_path: Path) -> None:
    def build(lib: Any, net: nn.Module) -> Any:
        model = lib.get_peft_model(net, lib.LoraConfig(target_modules=["down"]))
        model.add_adapter("other", lib.LoraConfig(target_modules=["up", "down"], target_parameters=["head.weight"]))
        return model

    ours, ref = _both(build)
    assert ours.targeted_module_names == ref.targeted_module_names
    assert ours.targeted_parameter_names == ref.targeted_parameter_names == ["head.weight"]
    ours.delete_adapter("other")  # deleting does not shrink the bookkeeping
    ref.delete_adapter("other")
    assert ours.targeted_module_names == ref.targeted_module_names

    ref.save_pretrained(tmp_path, selected_adapters=["default"])
    torch.manual_seed(0)
    loaded = peftkit.PeftModel.from_pretrained(Net(), tmp_path)
    loaded.load_adapter(tmp_path, adapter_name="again")
    torch.manual_seed(0)
    loaded_ref = peft.PeftModel.from_pretrained(Net(), tmp_path)
    loaded_ref.load_adapter(tmp_path, adapter_name="again")
    assert loaded.targeted_module_names == loaded_ref.targeted_module_names == ["layers.0.down", "layers.1.down"]


@dataclasses.dataclass
class _DataclassConfig:
    hidden_size: int = 4
    tie_word_embeddings: bool = True


class _ToDictConfig:
    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "toy", "hidden_size": 4}


@pytest.mark.parametrize("config", [_ToDictConfig(), {"hidden_size": 4}, _DataclassConfig(), None, "absent"])
def test_get_model_config_matches_reference(config: object) -> None:
    model = nn.Linear(2, 2)
    if config != "absent":
        model.config = config  # type: ignore[assignment]  # what models carry there varies; the point of the test
    ours = peftkit.tuners.tuners_utils.BaseTuner.get_model_config(model)
    assert ours == theirs_utils.BaseTuner.get_model_config(model)
    assert DUMMY_MODEL_CONFIG == THEIR_DUMMY


def _prefix_cases() -> list[tuple[str, dict[str, Any]]]:
    token_rows = {"target_modules": ["down"], "trainable_token_indices": {"emb": [0, 3]}}
    return [*CONFIGS, ("LoraConfig", token_rows), ("LoraConfig", {"target_modules": ["up"], "use_dora": True})]


@pytest.mark.parametrize(("kind", "options"), _prefix_cases())
@pytest.mark.parametrize("adapter_name", [None, "default", "other"])
def test_state_dict_key_prefixes_match_reference(kind: str, options: dict[str, Any], adapter_name: str | None) -> None:
    def build(lib: Any, net: nn.Module) -> Any:
        model = lib.get_peft_model(net, getattr(lib, kind)(**options))
        model.add_adapter("other", getattr(lib, kind)(**{**options, "modules_to_save": None}))
        return model

    ours, ref = _both(build)
    for ours_model, ref_model in ((ours, ref), (ours.base_model.model, ref.base_model.model)):
        mine = ours_utils._get_tuner_state_dict_key_prefixes(ours_model, adapter_name=adapter_name)
        assert mine == theirs_utils._get_tuner_state_dict_key_prefixes(ref_model, adapter_name=adapter_name)
        selected = ours_utils._filter_state_dict_by_key_prefixes(ours_model.state_dict(), mine)
        expected = theirs_utils._filter_state_dict_by_key_prefixes(ref_model.state_dict(), mine)
        assert sorted(selected) == sorted(expected) and selected  # the same keys select the same entries


def test_filter_by_prefixes_respects_dots() -> None:
    state = {"a": 0, "a.b": 1, "a.b.c": 2, "a.bc": 3, "ab": 4, "x.a.b": 5, "b.c": 6}
    for prefixes in ({"a.b"}, {"a"}, {"a.b", "b.c"}, set(), {"x"}):
        assert ours_utils._filter_state_dict_by_key_prefixes(state, prefixes) == (
            theirs_utils._filter_state_dict_by_key_prefixes(state, prefixes)
        )


def _random_names(rng: random.Random, count: int) -> list[str]:
    parts = ["model", "layers", "0", "1", "2", "attn", "mlp", "q", "k", "up", "x.y"]
    return [".".join(rng.choice(parts) for _ in range(rng.randint(1, 5))) for _ in range(count)]


@pytest.mark.parametrize("seed", range(60))
def test_find_minimal_target_modules_matches_reference(seed: int) -> None:
    rng = random.Random(seed)
    names = sorted(set(_random_names(rng, 14)))
    rng.shuffle(names)
    cut = rng.randint(1, len(names))
    targets, others = names[:cut], names[cut:]
    if seed % 10 == 0 and others:
        targets.append(others[0])  # not disjoint: both refuse
    outcome = []
    for fn in (ours_utils._find_minimal_target_modules, theirs_utils._find_minimal_target_modules):
        try:
            outcome.append(("result", fn(targets, others), fn(set(targets), set(others))))
        except ValueError:
            outcome.append(("ValueError",))
    assert outcome[0] == outcome[1]


@pytest.mark.parametrize(("targets", "others"), [("foo", ["bar"]), ([], ["foo"]), (["", "foo"], ["bar"])])
def test_find_minimal_target_modules_refusals(targets: Any, others: list[str]) -> None:
    with pytest.raises(ValueError):
        theirs_utils._find_minimal_target_modules(targets, others)
    with pytest.raises(ValueError, match="target_modules should"):
        ours_utils._find_minimal_target_modules(targets, others)
