"""``layers_to_transform`` / ``layers_pattern`` select the same modules as the reference's
``check_target_module_exists`` (first occurrence of the pattern, patterns as regexes, the no-pattern rule, empty
lists, a module named in full in ``target_modules``, selected whatever its layer), on module names of nested and
plain layouts; and injection adapts the same modules as the reference's."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.tuners.tuners_utils import check_target_module_exists

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import check_target_module_exists as reference_check  # noqa: E402

NAMES = [
    "model.layers.3.mlp.up_proj",
    "layers.3.mlp.up_proj",
    "a.b.3.c.up_proj",
    "model.layers.1.layers.0.up_proj",
    "layers.1.layers.0.up_proj",
    "transformer.h.2.attn.up_proj",
    "model.blocks.10.up_proj",
    "model.layers.2.up_proj.sub",
    "model.layers.2",
    "up_proj",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layers", [None, [], [0], [1], [2, 3], [10], 3])
@pytest.mark.parametrize("pattern", [None, "", [], "layers", ["blocks", "h"], [r"\d+\.layers"], "h"])
@pytest.mark.parametrize("targets", [["up_proj"], ["layers.3.mlp.up_proj", "model.layers.2"]])
def test_layer_selection_matches_reference(name: str, layers: object, pattern: object, targets: list[str]) -> None:
    options = {"target_modules": targets, "layers_to_transform": layers, "layers_pattern": pattern}
    try:
        theirs = peft.LoraConfig(**options)
    except ValueError:  # the reference refuses the combination (a pattern without layers): so does peftkit
        with pytest.raises(ValueError):
            peftkit.LoraConfig(**options)
        return
    ours = peftkit.LoraConfig(**options)
    assert bool(check_target_module_exists(ours, name)) == bool(reference_check(theirs, name))


class _Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"up_proj": torch.nn.Linear(4, 4)}) for _ in range(3))
        self.up_proj = torch.nn.Linear(4, 4)


@pytest.mark.parametrize(
    "targets", [["up_proj"], ["layers.2.up_proj"], ["up_proj", "layers.2.up_proj"], ["layers.0.up_proj"]]
)
def test_injection_selects_what_the_reference_selects(targets: list[str]) -> None:
    config = {"target_modules": targets, "layers_to_transform": [1], "layers_pattern": "layers"}
    chosen = []
    for lib in (peftkit, peft):
        try:
            chosen.append(lib.get_peft_model(_Stack(), lib.LoraConfig(**config)).targeted_module_names)
        except ValueError:
            chosen.append("nothing")
    assert chosen[0] == chosen[1]
