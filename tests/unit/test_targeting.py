"""``peftkit.targeting``: list / regex / all-linear targets, layers_to_transform with patterns, exclusions,
and ``pattern_value`` (first match wins)."""

from __future__ import annotations

import pytest
from torch import nn

from peftkit.errors import TargetingError
from peftkit.targeting import (
    all_linear_names,
    in_selected_layers,
    layer_index,
    name_matches,
    pattern_value,
    select_targets,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.xq = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))


class Toy(nn.Module):
    def __init__(self, layer_attr: str = "layers") -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        setattr(self, layer_attr, nn.ModuleList([Block() for _ in range(3)]))
        self.head = nn.Linear(4, 10)

    def get_output_embeddings(self) -> nn.Module:
        return self.head


LINEAR = (nn.Linear, nn.Embedding)


def select(model: nn.Module, targets, **kwargs) -> list[str]:
    return select_targets(model.named_modules(), targets, adaptable=LINEAR, **kwargs)


def test_name_matches() -> None:
    assert name_matches("layers.0.q", ["q"])
    assert name_matches("q", ["q"])
    assert not name_matches("layers.0.xq", ["q"]), "a list entry matches whole name segments only"
    assert name_matches("layers.0.q", {"0.q"})
    assert name_matches("layers.0.q", r"layers\.\d\.q")
    assert not name_matches("layers.0.q", "q"), "a regex string must match the whole name"
    assert not name_matches("layers.0.q", None)


def test_list_targets_in_model_order() -> None:
    assert select(Toy(), ["q", "head"]) == ["layers.0.q", "layers.1.q", "layers.2.q", "head"]


def test_regex_targets_skip_containers() -> None:
    assert select(Toy(), r"layers\.[02]\.(k|mlp\.0)") == [
        "layers.0.k",
        "layers.0.mlp.0",
        "layers.2.k",
        "layers.2.mlp.0",
    ]
    # a regex that also matches containers (Block, Sequential) keeps only adaptable leaves
    assert select(Toy(), r"layers\.1.*") == [
        "layers.1.q",
        "layers.1.xq",
        "layers.1.k",
        "layers.1.mlp.0",
        "layers.1.mlp.2",
    ]


def test_list_naming_an_unadaptable_module_raises() -> None:
    with pytest.raises(TargetingError, match=r"'layers\.0\.mlp' is a Sequential"):
        select(Toy(), ["mlp"])


def test_nothing_matched_lists_module_names() -> None:
    with pytest.raises(TargetingError, match="not found in the base model") as info:
        select(Toy(), ["q_proj"])
    message = str(info.value)
    assert "'q_proj'" in message and "layers.0.q" in message and "head" in message


def test_all_linear_excludes_output_head() -> None:
    names = all_linear_names(Toy(), (nn.Linear,))
    assert "head" not in names and "emb" not in names
    assert names == {f"layers.{i}.{n}" for i in range(3) for n in ("q", "xq", "k", "mlp.0", "mlp.2")}


def test_all_linear_without_linear_layers_raises() -> None:
    with pytest.raises(TargetingError, match="all-linear"):
        all_linear_names(nn.Sequential(nn.ReLU()), (nn.Linear,))


@pytest.mark.parametrize(
    ("layers", "pattern", "expected"),
    [
        ([0, 2], "layers", ["layers.0.q", "layers.2.q"]),
        (1, ["layers"], ["layers.1.q"]),
        ([], None, ["layers.0.q", "layers.1.q", "layers.2.q"]),  # an empty list selects no layer subset (PEFT)
        ([2], "layers", ["layers.2.q"]),
        ([2], ["blocks", "layers"], ["layers.2.q"]),
    ],
)
def test_layers_to_transform(layers, pattern, expected) -> None:
    assert select(Toy(), ["q"], layers_to_transform=layers, layers_pattern=pattern) == expected


def test_layers_to_transform_without_pattern_needs_a_named_container_first() -> None:
    """PEFT's rule without ``layers_pattern``: the first number after ``<something>.<container>.``; a top-level
    ``layers.0.q`` has none, so nothing is selected (and the selection says so)."""
    with pytest.raises(TargetingError):
        select(Toy(), ["q"], layers_to_transform=[0], layers_pattern=None)


def test_layers_to_transform_with_custom_layer_name() -> None:
    model = Toy(layer_attr="stages")
    assert select(model, ["k"], layers_to_transform=[1], layers_pattern="stages") == ["stages.1.k"]
    with pytest.raises(TargetingError, match="layers_to_transform=\\[1\\]"):
        select(model, ["k"], layers_to_transform=[1])  # "stages" is not a default pattern
    with pytest.raises(TargetingError):
        select(Toy(), ["q"], layers_to_transform=[1], layers_pattern="blocks")


def test_layer_index_and_selection() -> None:
    assert layer_index("model.layers.3.self_attn.q_proj") == 3
    assert layer_index("transformer.h.11.attn.c_attn") == 11
    assert layer_index("encoder.layer.0.attention.self.query") == 0
    assert layer_index("model.embed_tokens") is None
    assert layer_index("model.layers.3.q", "h") is None
    assert layer_index("model.stages.2.q", ["blocks", "stages"]) == 2
    assert in_selected_layers("model.layers.3.q", None, None)
    assert in_selected_layers("model.layers.3.q", [1, 3], None)
    assert not in_selected_layers("model.layers.3.q", 1, None)
    assert not in_selected_layers("model.embed_tokens", [0], None)


def test_exclude_modules_wins() -> None:
    assert select(Toy(), ["q", "k"], exclude_modules=["k"]) == ["layers.0.q", "layers.1.q", "layers.2.q"]
    assert select(Toy(), ["q"], exclude_modules=r"layers\.1\.q") == ["layers.0.q", "layers.2.q"]
    with pytest.raises(TargetingError):
        select(Toy(), ["q"], exclude_modules=["q"])


def test_skip_prefixes() -> None:
    assert select(Toy(), ["q"], skip=["layers.1"]) == ["layers.0.q", "layers.2.q"]


def test_pattern_value_first_match_wins() -> None:
    name = "model.layers.0.self_attn.q_proj"
    assert pattern_value(name, {"q_proj": 4, r"layers\.0\.self_attn\.q_proj": 16}, 8) == 4
    assert pattern_value(name, {r"layers\.0\.self_attn\.q_proj": 16, "q_proj": 4}, 8) == 16
    assert pattern_value(name, {"v_proj": 4}, 8) == 8
    assert pattern_value(name, {"proj": 4}, 8) == 8, "a key matches whole trailing segments, not a suffix"
    assert pattern_value(name, {r"layers\.[01]\..*": 2}, 8) == 2
    assert pattern_value("q_proj", {"q_proj": 3}, 8) == 3
