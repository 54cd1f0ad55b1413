"""DoRA on embedding and convolution layers against the reference peft 0.21.2: saved by one library, loaded by
the other with the same outputs (unmerged and merged); same config JSON, tensor keys and shapes (the magnitude
is ``(dim,)`` for an embedding, ``(1, out, 1, 1)`` for a Conv2d), same parameter counts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tests._tiny import randomise_adapter
from tests.compat._cross import LIBS, Adapter, compat_tests

CASES = [
    Adapter("embedding", "LoraConfig", {"r": 4, "target_modules": ["embed_tokens", "q_proj"], "use_dora": True}),
    Adapter(
        "conv2d_other_name",
        "LoraConfig",
        {"r": 2, "lora_alpha": 5, "target_modules": ["conv", "lin"], "use_dora": True},
        "convnet",
        name="other",
    ),
]

# peft's notice while saving an adapter that targets an embedding (its base weight is saved too).
pytestmark = pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning")

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)


@pytest.mark.parametrize(
    ("kind", "shape"), [("conv1d", (2, 3, 9)), ("conv3d", (2, 3, 4, 4, 4))], ids=["conv1d", "conv3d"]
)
@pytest.mark.parametrize(("source", "target"), [("peft", "peftkit"), ("peftkit", "peft")])
def test_conv1d_and_conv3d_magnitudes_move_both_ways(
    kind: str, shape: tuple, source: str, target: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        conv = torch.nn.Conv1d(3, 4, 3, padding=1) if kind == "conv1d" else torch.nn.Conv3d(3, 4, 2)
        return torch.nn.Sequential(conv, torch.nn.ReLU())

    config = LIBS[source].LoraConfig(r=2, target_modules=["0"], use_dora=True, init_lora_weights=False)
    saved = LIBS[source].get_peft_model(net(), config).eval()
    randomise_adapter(saved)
    saved.save_pretrained(tmp_path)
    magnitude = load_file(tmp_path / "adapter_model.safetensors")["base_model.model.0.lora_magnitude_vector"]
    assert magnitude.shape == (1, 4, *[1] * (len(shape) - 2))
    loaded = LIBS[target].PeftModel.from_pretrained(net(), tmp_path).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        expected = saved(x)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded.merge_and_unload()(x), expected, atol=1e-5, rtol=1e-5)
