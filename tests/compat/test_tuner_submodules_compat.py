"""PEFT's per-method files (``peft.tuners.<method>.layer`` / ``.config`` / ``.model``) are import paths in peftkit:
each class the reference defines there that peftkit's ``tuners.<method>`` offers imports from the same path,
and ``peft.utils.TrainableTokensWrapper`` exists, an instance check true for LoRA's trainable-token wrapper."""

from __future__ import annotations

import importlib
import inspect

import peft
import pytest
import torch

import peftkit
from peftkit.registry import METHODS

PAIRS = [
    (method, part)
    for method in (t.value.lower() for t in METHODS)
    for part in ("layer", "config", "model")
    if importlib.util.find_spec(f"peft.tuners.{method}") and importlib.util.find_spec(f"peft.tuners.{method}.{part}")
]


@pytest.mark.parametrize(("method", "part"), PAIRS, ids=[f"{m}.{p}" for m, p in PAIRS])
def test_classes_of_the_references_method_files_import_from_the_same_path(method: str, part: str) -> None:
    reference = importlib.import_module(f"peft.tuners.{method}.{part}")
    ours_top = importlib.import_module(f"peftkit.tuners.{method}")
    defined = {
        name
        for name, obj in vars(reference).items()
        if inspect.isclass(obj) and obj.__module__ == reference.__name__ and not name.startswith("_")
    }
    offered = sorted(name for name in defined if hasattr(ours_top, name))
    assert offered, f"peftkit offers none of {sorted(defined)}"
    ours = importlib.import_module(f"peftkit.tuners.{method}.{part}")
    for name in offered:
        assert getattr(ours, name) is getattr(ours_top, name)


def test_trainable_tokens_layer_and_wrapper_at_the_references_paths() -> None:
    from peftkit.tuners.trainable_tokens.layer import TrainableTokensLayer

    from peftkit.utils import TrainableTokensWrapper

    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    standalone = peftkit.get_peft_model(net, peftkit.TrainableTokensConfig(target_modules=["0"], token_indices=[1]))
    assert isinstance(standalone.base_model.model[0], TrainableTokensLayer)
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    combined = peftkit.get_peft_model(net, peftkit.LoraConfig(target_modules=["1"], trainable_token_indices={"0": [1]}))
    assert isinstance(combined.base_model.model[0], TrainableTokensWrapper)
    assert hasattr(peft.utils, "TrainableTokensWrapper")  # the reference's path
