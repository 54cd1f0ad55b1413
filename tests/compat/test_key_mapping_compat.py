"""Loading an adapter saved on a model whose module layout transformers has since changed: the model's
``_checkpoint_conversion_mapping`` renames the file's keys on load (PEFT's default ``key_mapping``), both
libraries loading the old-layout file into the new layout alike; ``load_peft_weights(key_mapping=...)`` renames as
the reference does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from torch import nn

import peftkit
from peftkit.io.keys import remap_keys

MAPPING = {"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(6, 6)


class OldModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.ModuleDict({"blocks": nn.ModuleList([Block() for _ in range(2)])})
        self.model = nn.ModuleDict({"layers": nn.ModuleList([Block() for _ in range(2)])})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in [*self.visual["blocks"], *self.model["layers"]]:
            x = block.attn(x)
        return x


class NewModel(nn.Module):
    _checkpoint_conversion_mapping = MAPPING

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.visual = nn.ModuleDict({"blocks": nn.ModuleList([Block() for _ in range(2)])})
        self.model.language_model = nn.ModuleDict({"layers": nn.ModuleList([Block() for _ in range(2)])})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in [*self.model.visual["blocks"], *self.model.language_model["layers"]]:
            x = block.attn(x)
        return x


def _fresh(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls()


@pytest.mark.parametrize("source", ["peft", "peftkit"])
@torch.no_grad()
def test_old_layout_file_loads_into_the_new_layout_as_in_the_reference(source: str, tmp_path: Path) -> None:
    libs: dict[str, Any] = {"peft": peft, "peftkit": peftkit}
    config = libs[source].LoraConfig(target_modules=["attn"], init_lora_weights=False)
    torch.manual_seed(1)
    libs[source].get_peft_model(_fresh(OldModel), config).save_pretrained(tmp_path)
    x = torch.randn(3, 6)
    ours = peftkit.PeftModel.from_pretrained(_fresh(NewModel), tmp_path)(x)
    theirs = peft.PeftModel.from_pretrained(_fresh(NewModel), tmp_path)(x)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(ours, _fresh(NewModel)(x), atol=1e-4)  # the adapter was loaded, not skipped


def test_load_peft_weights_key_mapping_matches_reference(tmp_path: Path) -> None:
    torch.manual_seed(1)
    peft.get_peft_model(_fresh(OldModel), peft.LoraConfig(target_modules=["attn"])).save_pretrained(tmp_path)
    ours = peftkit.utils.load_peft_weights(tmp_path, device="cpu", key_mapping=MAPPING)
    theirs = peft.utils.load_peft_weights(tmp_path, device="cpu", key_mapping=MAPPING)
    assert sorted(ours) == sorted(theirs)
    assert remap_keys({"base_model.model.model.layers.0.attn.lora_A.weight": 1}, MAPPING) == {
        "base_model.model.model.language_model.layers.0.attn.lora_A.weight": 1
    }
