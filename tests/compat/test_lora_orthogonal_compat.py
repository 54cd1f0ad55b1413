"""``init_lora_weights="orthogonal"`` against the reference: the same seed draws the same factors; both are
non-zero while ``B A = 0`` (the model starts as its base); files, keys, counts and outputs both ways; odd ranks
and layers other than Linear are refused, leaving the model as it was."""

from __future__ import annotations

from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs, model_output
from tests.compat._cross import Adapter, compat_tests

import peftkit
from peftkit.errors import ConfigError, UnsupportedError
from peftkit.methods.lora.orthogonal import orthogonal_factors

FIELDS: dict[str, Any] = {
    "r": 4,
    "target_modules": ["q_proj", "v_proj", "down_proj"],
    "init_lora_weights": "orthogonal",
}
CROSS = [
    Adapter("llama", "LoraConfig", FIELDS),
    Adapter("gpt2_conv1d", "LoraConfig", {**FIELDS, "target_modules": ["c_attn"]}, model="gpt2"),
    Adapter("rank_pattern", "LoraConfig", {**FIELDS, "rank_pattern": {"v_proj": 2}}, name="other"),
]
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS)


@pytest.mark.parametrize(("r", "shape"), [(4, (16, 8)), (8, (8, 24)), (2, (5, 3))])
def test_same_seed_draws_the_reference_factors(r: int, shape: tuple[int, int]) -> None:
    base = torch.nn.Sequential(torch.nn.Linear(shape[1], shape[0]))
    ref = peft.get_peft_model(base, peft.LoraConfig(r=r, target_modules=["0"], init_lora_weights="orthogonal"))
    layer = ref.base_model.model[0]
    torch.manual_seed(123)
    layer.orthogonal_init("default")
    torch.manual_seed(123)
    A, B = orthogonal_factors(r, shape[1], shape[0])
    torch.testing.assert_close(A, layer.lora_A["default"].weight, rtol=0, atol=0)
    torch.testing.assert_close(B, layer.lora_B["default"].weight, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_factors_are_nonzero_and_start_as_the_base(kind: str) -> None:
    targets = ["q_proj", "v_proj", "down_proj"] if kind == "llama" else ["c_attn", "c_fc"]
    model = peftkit.get_peft_model(
        build_model(kind), peftkit.LoraConfig(r=6, target_modules=targets, init_lora_weights="orthogonal")
    )
    layers = [m for m in model.modules() if isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer)]
    assert layers
    for layer in layers:
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert A.abs().min() > 0 and B.abs().max() > 0
        assert (B @ A).abs().max() < 1e-6
        q = torch.linalg.svdvals(A)  # A = (X Q_o)^T / 10: rank r/2, its rows span Q_o's rows
        assert int((q > 1e-5).sum()) == 3
    inputs = model_inputs(kind)
    torch.testing.assert_close(model_output(model, inputs), model_output(build_model(kind), inputs))


def test_half_precision_base_rounds_factors_as_the_reference_stores_them() -> None:
    base = torch.nn.Sequential(torch.nn.Linear(8, 6)).to(torch.bfloat16)
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=4, target_modules=["0"], init_lora_weights="orthogonal"))
    A = model.base_model.model[0].lora_A["default"].weight
    assert A.dtype == torch.float32
    assert torch.equal(A, A.to(torch.bfloat16).float())


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"r": 7}, ConfigError),
        ({"r": 4, "rank_pattern": {"v_proj": 3}}, ConfigError),
        ({"r": 4, "target_modules": ["embed_tokens"]}, UnsupportedError),
    ],
)
def test_refusals_leave_the_model_unchanged(fields: dict[str, Any], error: type[Exception], unchanged: Any) -> None:
    model = build_model("llama")
    check = unchanged(model)
    config = peftkit.LoraConfig(**{"target_modules": ["q_proj", "v_proj"], "init_lora_weights": "orthogonal", **fields})
    with pytest.raises(error, match="orthogonal"):
        peftkit.get_peft_model(model, config)
    check()


def test_convolution_is_refused() -> None:
    config = peftkit.LoraConfig(r=2, target_modules=["conv"], init_lora_weights="orthogonal")
    with pytest.raises(UnsupportedError, match="Linear"):
        peftkit.get_peft_model(build_model("convnet"), config)
