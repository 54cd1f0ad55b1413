"""Every adapter layer exposes ``in_features`` / ``out_features`` with the reference peft 0.21.2's values, for
each layer method and each module type it adapts (code written against PEFT reads them on any tuner layer)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit
from peftkit.layers.base import AdapterLayer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.lin = nn.Linear(8, 12)
        self.conv = nn.Conv2d(4, 6, 1)
        self.gpt2 = Conv1D(12, 8)  # (out, in): weight (8, 12)
        self.norm = nn.LayerNorm(8)


CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("LoraConfig", {"target_modules": ["emb", "lin", "conv", "gpt2"]}),
    "ia3": ("IA3Config", {"target_modules": ["lin", "conv", "gpt2"], "feedforward_modules": []}),
    "adalora": ("AdaLoraConfig", {"target_modules": ["lin", "gpt2"], "total_step": 1}),
    "loha": ("LoHaConfig", {"target_modules": ["lin", "conv"]}),
    "lokr": ("LoKrConfig", {"target_modules": ["lin", "conv"]}),
    "oft": ("OFTConfig", {"target_modules": ["emb", "lin", "conv"], "oft_block_size": 2, "r": 0}),
    "boft": ("BOFTConfig", {"target_modules": ["lin", "conv"], "boft_block_size": 2}),
    "vera": ("VeraConfig", {"target_modules": ["lin"], "r": 2}),
    "ln_tuning": ("LNTuningConfig", {"target_modules": ["norm"]}),
    "trainable_tokens": ("TrainableTokensConfig", {"target_modules": ["emb"], "token_indices": [1, 3]}),
}


def features(lib: ModuleType, method: str, layer_type: type) -> dict[str, tuple[Any, Any]]:
    cls, fields = CONFIGS[method]
    torch.manual_seed(0)
    model = lib.get_peft_model(Net(), getattr(lib, cls)(**fields))
    found = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, layer_type)}
    assert found, "no adapter layer"
    return found


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", list(CONFIGS))
def test_in_and_out_features_are_the_references(method: str) -> None:
    assert features(peftkit, method, AdapterLayer) == features(peft, method, BaseTunerLayer)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_with_trainable_tokens_wrapper_exposes_the_embeddings_features() -> None:
    """``LoraConfig(trainable_token_indices=...)`` wraps the embedding. The reference's wrapper is no tuner layer,
    the layer inside it is; in peftkit both are adapter layers, and both give the embedding's
    ``(num_embeddings, embedding_dim)``, the reference's inner layer's values."""
    config = {"target_modules": ["lin"], "trainable_token_indices": {"emb": [1, 2]}}
    reference = peft.get_peft_model(Net(), peft.LoraConfig(**config))
    expected = {(m.in_features, m.out_features) for m in reference.modules() if isinstance(m, BaseTunerLayer)}
    ours = peftkit.get_peft_model(Net(), peftkit.LoraConfig(**config))
    found = [(m.in_features, m.out_features) for m in ours.modules() if type(m).__name__.startswith("Trainable")]
    assert len(found) == 2
    assert set(found) == {(10, 8)} and (10, 8) in expected
