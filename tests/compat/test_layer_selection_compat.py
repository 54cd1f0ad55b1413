"""``layers_to_transform`` / ``layers_pattern`` select the same modules as the reference's
``check_target_module_exists`` (first occurrence of the pattern, patterns as regexes, the no-pattern rule, empty
lists), on module names of nested and plain layouts (a bare name equal to a target, which the reference
selects whatever ``layers_to_transform`` says, is a documented difference: see ``check_target_module_exists``)."""

from __future__ import annotations

import pytest

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
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layers", [None, [], [0], [1], [2, 3], [10], 3])
@pytest.mark.parametrize("pattern", [None, "", [], "layers", ["blocks", "h"], [r"\d+\.layers"], "h"])
def test_layer_selection_matches_reference(name: str, layers: object, pattern: object) -> None:
    options = {"target_modules": ["up_proj"], "layers_to_transform": layers, "layers_pattern": pattern}
    try:
        theirs = peft.LoraConfig(**options)
    except ValueError:  # the reference refuses the combination (a pattern without layers): so does peftkit
        with pytest.raises(ValueError):
            peftkit.LoraConfig(**options)
        return
    ours = peftkit.LoraConfig(**options)
    assert bool(check_target_module_exists(ours, name)) == bool(reference_check(theirs, name))
