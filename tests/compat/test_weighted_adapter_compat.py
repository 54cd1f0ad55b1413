"""``add_weighted_adapter`` against the reference peft 0.21.2: from the same source adapters, every combination
type gives the same combined adapter (saved config JSON, tensor keys, shapes and values, model outputs).

The DARE types draw random masks; the reference initialises the new adapter (drawing from the global stream)
before its masks, peftkit does not (see :mod:`peftkit.methods.lora.weighted`), so for those the reference's
result is rebuilt from its own ``merge_utils`` functions on the stream state peftkit starts from.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from peft.utils import merge_utils as ref_merge
from safetensors.torch import load_file
from tests._tiny import build_model, model_inputs, model_output

import peftkit
from peftkit.methods.lora.layer import LoraLayer
from peftkit.utils import merge_utils as kit_merge

# peft's own notices while creating and saving the sources (Conv1D forces fan_in_fan_out; embeddings saved).
pytestmark = [
    pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to False:UserWarning"),
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
]
LIBS: dict[str, ModuleType] = {"peft": peft, "peftkit": peftkit}
DETERMINISTIC = ("cat", "linear", "svd", "ties", "ties_svd", "magnitude_prune", "magnitude_prune_svd")
RANDOM = ("dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd")
# (model kind, config of adapter "one", config of adapter "two")
SCENES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "llama": (
        "llama",
        {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        {"r": 4, "target_modules": ["q_proj", "k_proj", "embed_tokens"]},
    ),
    "llama_dora": (
        "llama",
        {"r": 4, "target_modules": ["q_proj", "v_proj"], "use_dora": True},
        {"r": 4, "target_modules": ["q_proj"], "lora_alpha": 16},
    ),
    "gpt2": ("gpt2", {"r": 4, "target_modules": ["c_attn"]}, {"r": 4, "target_modules": ["c_attn", "c_proj"]}),
    "convnet": (
        "convnet",
        {"r": 2, "target_modules": ["conv", "lin"]},
        {"r": 2, "target_modules": ["conv"], "lora_alpha": 4},
    ),
    "convnet_dora": (
        "convnet",
        {"r": 2, "target_modules": ["conv", "lin"], "use_dora": True},
        {"r": 2, "target_modules": ["conv"], "use_dora": True},
    ),
    "ranks": (
        "llama",
        {"r": 2, "target_modules": ["q_proj", "v_proj"]},
        {"r": 6, "target_modules": ["q_proj"], "lora_alpha": 3},
    ),
}


def sources(lib: ModuleType, scene: str) -> Any:
    """Adapters ``a`` and ``b`` of ``scene`` with ``lib``, their tensors set to the same random values in both."""
    kind, config_a, config_b = SCENES[scene]
    model = lib.get_peft_model(build_model(kind), lib.LoraConfig(**config_a), adapter_name="one")
    model.add_adapter("two", lib.LoraConfig(**config_b))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen) + (1.0 if "magnitude" in name else 0.0))
    return model.eval()


def combined(lib: ModuleType, scene: str, kind: str, tmp_path: Path, **kwargs: Any) -> tuple[Any, dict, dict]:
    """The model with adapter ``mix`` combined by ``lib``, its saved config JSON and tensors."""
    model = sources(lib, scene)
    torch.manual_seed(11)
    model.add_weighted_adapter(["one", "two"], [0.7, -0.4], "mix", combination_type=kind, **kwargs)
    model.save_pretrained(tmp_path / lib.__name__, selected_adapters=["mix"])
    directory = tmp_path / lib.__name__ / "mix"
    config = json.loads((directory / "adapter_config.json").read_text())
    return model, config, load_file(directory / "adapter_model.safetensors")


def assert_same(scene: str, kind: str, tmp_path: Path, **kwargs: Any) -> None:
    ref, ref_config, ref_tensors = combined(peft, scene, kind, tmp_path, **kwargs)
    ours, config, tensors = combined(peftkit, scene, kind, tmp_path, **kwargs)
    assert {k: v for k, v in config.items() if k != "target_modules"} == {
        k: v for k, v in ref_config.items() if k != "target_modules"
    }
    assert sorted(config["target_modules"]) == sorted(ref_config["target_modules"])
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in ref_tensors.items()}
    for key, value in tensors.items():
        torch.testing.assert_close(value, ref_tensors[key], atol=2e-5, rtol=1e-4, msg=key)
    assert not any(p.requires_grad for n, p in ours.named_parameters() if ".mix." in n)  # frozen, as in peft
    inputs = model_inputs(SCENES[scene][0])
    for model in (ref, ours):
        model.set_adapter("mix")
    expected = model_output(ref, inputs)
    assert not torch.allclose(expected, model_output(sources(peft, scene), inputs), atol=1e-4)  # mix changes the output
    torch.testing.assert_close(model_output(ours, inputs), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", DETERMINISTIC)
def test_every_deterministic_type_matches_peft_on_llama(kind: str, tmp_path: Path) -> None:
    assert_same("llama", kind, tmp_path, density=0.5)


@pytest.mark.parametrize(
    ("scene", "kind"),
    [
        ("llama_dora", "cat"),
        ("llama_dora", "ties_svd"),
        ("gpt2", "cat"),
        ("gpt2", "linear"),
        ("gpt2", "svd"),
        ("convnet", "cat"),
        ("convnet", "ties"),
        ("convnet", "magnitude_prune_svd"),
        ("convnet_dora", "cat"),
        ("convnet_dora", "svd"),
        ("ranks", "cat"),
        ("ranks", "svd"),
    ],
)
def test_layer_kinds_and_unequal_ranks_match_peft(scene: str, kind: str, tmp_path: Path) -> None:
    assert_same(scene, kind, tmp_path, density=0.6)


def test_svd_options_match_peft(tmp_path: Path) -> None:
    assert_same("ranks", "svd", tmp_path, svd_rank=3, svd_clamp=0.9, svd_full_matrices=False)


def test_frequency_sign_election_matches_peft(tmp_path: Path) -> None:
    assert_same("llama", "ties", tmp_path, density=0.4, majority_sign_method="frequency")


@pytest.mark.parametrize("kind", RANDOM)
def test_dare_types_equal_peft_merge_utils_on_the_same_stream(kind: str) -> None:
    """Per layer in module order, the reference's functions with the seed peftkit starts from."""
    model = sources(peftkit, "llama")
    torch.manual_seed(5)
    model.add_weighted_adapter(["one", "two"], [0.7, -0.4], "mix", combination_type=kind, density=0.5)
    torch.manual_seed(5)
    strategy = getattr(ref_merge, kind.removesuffix("_svd"))
    checked = 0
    for _, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or "mix" not in layer.scaling:
            continue
        embedding = "mix" in layer.lora_embedding_A
        factors = {n: layer.factor_tensors(n) for n in ("one", "two", "mix") if n in layer.scaling}
        present = [(a, w) for a, w in (("one", 0.7), ("two", -0.4)) if a in factors]
        if kind.endswith("_svd"):
            deltas = [layer.get_delta_weight(a).detach() for a, _ in present]
            delta = strategy(deltas, torch.tensor([w for _, w in present]), 0.5)
            U, S, Vh = torch.linalg.svd(delta.T if embedding else delta)
            expected_B, expected_A = U[:, :4] * S[:4], Vh[:4]
        else:
            scaled = [w * layer.scaling[a] for a, w in present]
            roots = torch.tensor([abs(v) ** 0.5 for v in scaled])
            signs = torch.tensor([1.0 if v >= 0 else -1.0 for v in scaled])
            expected_A = strategy([factors[a][0].detach() for a, _ in present], roots * signs, 0.5)
            expected_B = strategy([factors[a][1].detach() for a, _ in present], roots, 0.5)
        torch.testing.assert_close(factors["mix"][0], expected_A, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(factors["mix"][1], expected_B, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked == 7  # the embedding, q/k/v_proj of two layers


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "ties", "magnitude_prune", "task_arithmetic"])
def test_strategies_equal_peft_merge_utils_for_one_seed(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(6, 5, generator=gen) for _ in range(3)]
    weights = torch.tensor([0.5, -1.0, 2.0])
    args: tuple[Any, ...] = () if name == "task_arithmetic" else (0.4,)
    torch.manual_seed(9)
    expected = getattr(ref_merge, name)(tensors, weights, *args)
    torch.manual_seed(9)
    torch.testing.assert_close(getattr(kit_merge, name)(tensors, weights, *args), expected, atol=0, rtol=0)


def test_ia3_weighted_adapter_matches_peft(tmp_path: Path) -> None:
    results = {}
    for lib in (peft, peftkit):
        config = {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
        model = lib.get_peft_model(build_model("llama"), lib.IA3Config(**config), adapter_name="one")
        model.add_adapter(
            "two", lib.IA3Config(target_modules=["v_proj", "down_proj"], feedforward_modules=["down_proj"])
        )
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if ".ia3_l." in name:
                    param.copy_(torch.randn(param.shape, generator=gen))
        model.add_weighted_adapter(["one", "two"], [0.6, 0.3], "mix")
        model.save_pretrained(tmp_path / lib.__name__, selected_adapters=["mix"])
        model.set_adapter("mix")
        saved = tmp_path / lib.__name__ / "mix"
        config_json = json.loads((saved / "adapter_config.json").read_text())
        config_json = {k: sorted(v) if isinstance(v, list) else v for k, v in config_json.items()}
        results[lib.__name__] = (
            config_json,
            load_file(saved / "adapter_model.safetensors"),
            model_output(model, model_inputs("llama")),
        )
    (ref_config, ref_tensors, ref_out), (config, tensors, out) = results["peft"], results["peftkit"]
    assert config == ref_config
    assert tensors.keys() == ref_tensors.keys()
    for key in tensors:
        torch.testing.assert_close(tensors[key], ref_tensors[key], atol=0, rtol=0)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
