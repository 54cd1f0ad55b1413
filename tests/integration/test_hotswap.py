"""Hot-swapping LoRA adapters in place: through the model method (enable_peft_hotswap + load_adapter(...,
hotswap=True)) and PEFT's functions (prepare_model_for_compiled_hotswap, hotswap_adapter). After every swap
the outputs equal a fresh load of the new adapter; the parameters and their shapes stay the same objects."""

from __future__ import annotations

import pytest
import torch
from tests._tiny import inputs_for, output_of, tiny_llama
from tests.integration._transformers_fixtures import lora
from torch import nn

import peftkit
from peftkit.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap

TARGETS = ["q_proj", "v_proj"]
ADAPTERS = {
    "r4": {"r": 4, "alpha": 8},
    "r8_patterns": {"r": 8, "alpha": 32, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"q_proj": 3.0}},
    "r16_rslora": {"r": 16, "alpha": 5, "use_rslora": True},
    "r2": {"r": 2, "alpha": 64},
}


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for seed, (name, kwargs) in enumerate(ADAPTERS.items()):
        model = peftkit.enable_adapter_methods(tiny_llama())
        torch.manual_seed(100 + seed)
        model.add_adapter(lora(target_modules=TARGETS, **kwargs))
        model.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def fresh_output(path: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.load_adapter(path)
    return output_of(model, x)


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def test_model_method_swaps_any_rank_and_alpha(adapter_dirs, tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.enable_peft_hotswap(target_rank=16)
    model.load_adapter(adapter_dirs["r4"])
    x = inputs_for(model)
    torch.testing.assert_close(output_of(model, x), fresh_output(adapter_dirs["r4"], x))
    params = adapter_params(model)
    assert all(p.shape[0] == 16 or p.shape[1] == 16 for p in params.values())
    for name in ("r8_patterns", "r16_rslora", "r2", "r4"):
        hotswap = True if name != "r4" else "auto"  # "auto" swaps after enable_peft_hotswap
        model.load_adapter(adapter_dirs[name], hotswap=hotswap)
        torch.testing.assert_close(output_of(model, x), fresh_output(adapter_dirs[name], x))
        assert adapter_params(model) == params and list(model.peft_config) == ["default"]
    model.load_adapter(adapter_dirs["r8_patterns"], hotswap=True)
    model.save_pretrained(tmp_path / "saved")  # the config written describes the padded adapter exactly
    torch.testing.assert_close(fresh_output(str(tmp_path / "saved"), x), output_of(model, x))


def test_hotswap_errors_leave_the_model_unchanged(adapter_dirs, tmp_path) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.enable_peft_hotswap(target_rank=8)
    model.load_adapter(adapter_dirs["r4"])
    x = inputs_for(model)
    before = output_of(model, x)
    with pytest.raises(peftkit.HotswapError, match="slot holds rank 8"):
        model.load_adapter(adapter_dirs["r16_rslora"], hotswap=True)
    other = peftkit.enable_adapter_methods(tiny_llama())
    other.add_adapter(lora(target_modules=["q_proj", "k_proj"]))
    other.save_pretrained(tmp_path / "other_targets")
    with pytest.raises(peftkit.HotswapError, match="targets other modules"):
        model.load_adapter(tmp_path / "other_targets", hotswap=True)
    torch.testing.assert_close(output_of(model, x), before)
    with pytest.raises(peftkit.HotswapError, match="already loaded"):
        model.load_adapter(adapter_dirs["r2"], adapter_name="absent", hotswap=True)
    with pytest.raises(RuntimeError, match="before loading the first adapter"):
        model.enable_peft_hotswap(target_rank=16)


def test_without_preparation_only_smaller_ranks_fit(adapter_dirs) -> None:
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.load_adapter(adapter_dirs["r4"])
    x = inputs_for(model)
    model.load_adapter(adapter_dirs["r2"], hotswap=True)  # rank 2 fits a rank-4 slot, alpha 64 takes effect
    torch.testing.assert_close(output_of(model, x), fresh_output(adapter_dirs["r2"], x))
    with pytest.raises(ValueError, match="enable_peft_hotswap"):
        model.load_adapter(adapter_dirs["r8_patterns"], hotswap=True)


def test_peft_functions_on_peft_model(adapter_dirs) -> None:
    model = peftkit.PeftModel.from_pretrained(tiny_llama(), adapter_dirs["r4"])
    prepare_model_for_compiled_hotswap(model, target_rank=16)
    x = inputs_for(tiny_llama())
    for name in ("r16_rslora", "r8_patterns", "r2"):
        hotswap_adapter(model, adapter_dirs[name], adapter_name="default", torch_device="cpu")
        expected = output_of(peftkit.PeftModel.from_pretrained(tiny_llama(), adapter_dirs[name]), x)
        torch.testing.assert_close(output_of(model, x), expected)
    with pytest.raises(peftkit.HotswapError, match="rank 16"):
        prepare_model_for_compiled_hotswap(model, target_rank=4)


def test_only_lora_adapters_hotswap(tmp_path) -> None:
    """AdaLoRA configs subclass LoraConfig, but their layers hold A, E and B: refused, model untouched."""
    config = peftkit.AdaLoraConfig(target_modules=TARGETS, init_r=4, target_r=2, total_step=10)
    model = peftkit.get_peft_model(tiny_llama(), config)
    model.save_pretrained(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(peftkit.HotswapError, match=r"LoRA adapters only.*ADALORA -> ADALORA"):
        hotswap_adapter(model, str(tmp_path), adapter_name="default", torch_device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class TwoLayer(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_swaps_do_not_recompile(tmp_path) -> None:
    for name, (r, alpha) in {"a": (2, 4), "b": (6, 30)}.items():
        peftkit.get_peft_model(TwoLayer(seed=r), lora(r=r, alpha=alpha, target_modules=["fc1", "fc2"])).save_pretrained(
            tmp_path / name
        )
    model = peftkit.PeftModel.from_pretrained(TwoLayer(), tmp_path / "a")
    with pytest.raises(peftkit.HotswapError, match=r"before torch\.compile"):
        prepare_model_for_compiled_hotswap(torch.compile(model, backend="eager"))
    prepare_model_for_compiled_hotswap(model, target_rank=8)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 8)
    with torch.no_grad():
        compiled(x)
        hotswap_adapter(model, tmp_path / "b", adapter_name="default")
        with torch._dynamo.config.patch(error_on_recompile=True):
            swapped = compiled(x)
    fresh = peftkit.PeftModel.from_pretrained(TwoLayer(), tmp_path / "b")
    with torch.no_grad():
        torch.testing.assert_close(swapped, fresh(x))


def test_integer_tensor_in_the_new_adapter_is_refused_by_key_and_dtype(adapter_dirs, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "int_adapter"
    shutil.copytree(adapter_dirs["r4"], bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, bad / "adapter_model.safetensors")
    model = peftkit.enable_adapter_methods(tiny_llama())
    model.enable_peft_hotswap(target_rank=8)
    model.load_adapter(adapter_dirs["r4"])
    x = inputs_for(model)
    before = output_of(model, x)
    with pytest.raises(
        peftkit.HotswapError, match=rf"{key.removeprefix('base_model.model.')}: the file holds a torch.int32"
    ):
        model.load_adapter(bad, hotswap=True)
    torch.testing.assert_close(output_of(model, x), before)
