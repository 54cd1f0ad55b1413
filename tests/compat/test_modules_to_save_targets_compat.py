"""Targets that also match inside a ``modules_to_save`` module (``dense`` in RoBERTa's classification head): the
module trained in full gets no adapter layer, neither in the original nor in its copy (PEFT's rule), and the
adapter reloads exactly in both libraries, for LoRA and AdaLoRA."""

from __future__ import annotations

import warnings
from types import ModuleType

import peft as reference
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

import peftkit

LIBS: dict[str, ModuleType] = {"peft": reference, "peftkit": peftkit}
CONFIGS = {
    "lora": ("LoraConfig", {"init_lora_weights": False}),
    "adalora": ("AdaLoraConfig", {"init_r": 4, "target_r": 2, "total_step": 10}),
}


def roberta() -> RobertaForSequenceClassification:
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, num_labels=3,
    )  # fmt: skip
    return RobertaForSequenceClassification(config).eval()


def build(lib: ModuleType, method: str) -> torch.nn.Module:
    name, fields = CONFIGS[method]
    config = getattr(lib, name)(task_type="SEQ_CLS", target_modules=["query", "value", "dense"], **fields)
    model = lib.get_peft_model(roberta(), config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # adapter factors and the classifier's copy: all non-trivial
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


INPUTS = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_modules_to_save_hold_no_adapter_layers_as_in_peft(method) -> None:
    ours, theirs = build(peftkit, method), build(reference, method)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    head = ours.base_model.model.classifier
    for module in (head.original_module, head.modules_to_save["default"]):
        assert type(module.dense) is torch.nn.Linear
    assert set(ours.get_adapter_state_dict()) == set(reference.get_peft_model_state_dict(theirs))


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("source, target", [("peftkit", "peftkit"), ("peft", "peftkit"), ("peftkit", "peft")])
@torch.no_grad()
def test_reload_is_exact(tmp_path, method, source, target) -> None:
    saved = build(LIBS[source], method)
    saved.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = LIBS[target].PeftModel.from_pretrained(roberta(), tmp_path).eval()
    expected = saved(input_ids=INPUTS).logits
    assert not torch.allclose(expected, roberta()(input_ids=INPUTS).logits, atol=1e-3)
    torch.testing.assert_close(loaded(input_ids=INPUTS).logits, expected, atol=1e-5, rtol=1e-5)
