"""Trainable tokens on an encoder-decoder with tied embeddings (T5: ``shared``, ``encoder.embed_tokens``,
``decoder.embed_tokens`` and ``lm_head`` hold one ``Parameter``): every tied module computes with the trained
rows, the files hold the reference's keys, and adapters move both ways with equal outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file

import peftkit

peft = pytest.importorskip("peft")

IDS = torch.tensor([[0, 1, 2, 3, 5]])


def _t5() -> transformers.T5ForConditionalGeneration:
    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0
    )
    torch.manual_seed(0)
    return transformers.T5ForConditionalGeneration(config).eval()


def _config(lib: Any, kind: str) -> Any:
    if kind == "tokens":
        return lib.TrainableTokensConfig(target_modules=["shared"], token_indices=[0, 1, 2, 3])
    return lib.LoraConfig(target_modules=["q"], trainable_token_indices={"shared": [0, 1, 2]})


def _trained(lib: Any, kind: str) -> Any:
    model = lib.get_peft_model(_t5(), _config(lib, kind))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every trainable tensor gets fresh values, in the same order in both libraries
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator))
    return model.eval()


def _logits(model: Any) -> torch.Tensor:
    return model(input_ids=IDS, decoder_input_ids=IDS).logits.detach()


@pytest.mark.parametrize("kind", ["tokens", "lora"])
def test_every_tied_embedding_uses_the_trained_rows(kind: str) -> None:
    base = _trained(peftkit, kind).get_base_model()
    rows = base.shared(IDS)
    assert not torch.allclose(rows, _t5().shared(IDS))  # the trained rows are in use
    torch.testing.assert_close(base.encoder.embed_tokens(IDS), rows)
    torch.testing.assert_close(base.decoder.embed_tokens(IDS), rows)
    hidden = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(base.lm_head(hidden), hidden @ base.shared(torch.arange(64)).T)


@pytest.mark.parametrize("kind", ["tokens", "lora"])
def test_tied_tokens_match_reference_both_ways(tmp_path: Path, kind: str) -> None:
    ours, theirs = _trained(peftkit, kind), _trained(peft, kind)
    torch.testing.assert_close(_logits(ours), _logits(theirs))
    ours.save_pretrained(tmp_path / "kit")
    theirs.save_pretrained(tmp_path / "ref")
    mine = load_file(tmp_path / "kit" / "adapter_model.safetensors")
    reference = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    assert mine.keys() == reference.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], reference[key])
    for lib, folder, expected in ((peft, "kit", ours), (peftkit, "ref", theirs)):
        loaded = lib.PeftModel.from_pretrained(_t5(), tmp_path / folder).eval()
        torch.testing.assert_close(_logits(loaded), _logits(expected))
