"""``prepare_model_for_kbit_training`` against the reference peft on the same quantized model, its import
paths, and the clear error for quantizations that cannot train."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
from tests.quant._quant_models import load_quantized

import peftkit
from peftkit.errors import UnsupportedError


def summary(model: torch.nn.Module) -> dict[str, object]:
    return {
        "params": {name: (type(p).__name__, p.dtype, p.requires_grad) for name, p in model.named_parameters()},
        "checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in model.modules()),
    }


@pytest.mark.parametrize("kind", ["nf4-bf16-dq", "int8", "torchao-int8"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"use_gradient_checkpointing": False}, {"gradient_checkpointing_kwargs": {"use_reentrant": False}}]
)
def test_prepare_matches_the_reference(tiny_dir, kind: str, kwargs: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated transformers call of our own
        ours = peftkit.prepare_model_for_kbit_training(load_quantized(tiny_dir, kind, dtype=torch.bfloat16), **kwargs)
    reference = peft.prepare_model_for_kbit_training(load_quantized(tiny_dir, kind, dtype=torch.bfloat16), **kwargs)
    assert summary(ours) == summary(reference)
    ids = torch.randint(0, 64, (1, 4))
    if kwargs.get("use_gradient_checkpointing", True) and "gradient_checkpointing_kwargs" not in kwargs:
        assert ours.get_input_embeddings()(ids).requires_grad  # reentrant checkpointing needs a grad-carrying input
    norms = [p for name, p in ours.named_parameters() if "norm" in name]
    upcast = not kind.startswith("torchao")  # torchao kernels read the float tensors in the model's dtype
    assert norms and all((p.dtype == torch.float32) == upcast for p in norms)


def test_prepare_is_importable_from_peft_paths() -> None:
    from peftkit.utils import prepare_model_for_kbit_training as from_utils
    from peftkit.utils.other import prepare_model_for_kbit_training as from_other

    assert from_utils is from_other is peftkit.prepare_model_for_kbit_training


def test_prepared_4bit_model_trains_with_checkpointing(tiny_dir) -> None:
    model = peftkit.prepare_model_for_kbit_training(load_quantized(tiny_dir, "nf4"))
    model = peftkit.get_peft_model(model, peftkit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_quantization_that_cannot_train_is_refused(tiny_dir) -> None:
    model = load_quantized(tiny_dir, "torchao-intx4")
    assert not model.hf_quantizer.is_trainable
    with pytest.raises(UnsupportedError, match="cannot be trained"):
        peftkit.prepare_model_for_kbit_training(model)
