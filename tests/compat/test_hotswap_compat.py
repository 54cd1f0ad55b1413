"""``hotswap_adapter`` without ``prepare_model_for_compiled_hotswap``, against the reference's
``peft.utils.hotswap.hotswap_adapter``: a larger rank, a smaller rank and fewer target modules swap in with the
reference's outputs (a layer the new adapter lacks adds nothing: its old weights are zeroed); a new adapter that
targets a module the loaded one does not adapt is refused by both, leaving the model as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from peft.utils.hotswap import hotswap_adapter as peft_hotswap_adapter
from tests._tiny import build_model, model_inputs, randomise_adapter

import peftkit
from peftkit.errors import HotswapError

FIRST: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
NEW: dict[str, dict[str, Any]] = {
    "larger_rank": {"r": 8, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    "smaller_rank": {"r": 2, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    "fewer_targets": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
}


def _save(fields: dict[str, Any], path: Path, seed: int) -> Path:
    model = peft.get_peft_model(build_model("llama"), peft.LoraConfig(**fields))
    randomise_adapter(model, seed=seed)
    model.save_pretrained(path)
    return path


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs("llama")).logits


@pytest.mark.parametrize("case", sorted(NEW))
def test_hotswap_without_preparation_matches_reference(case: str, tmp_path: Path) -> None:
    first = _save(FIRST, tmp_path / "first", seed=1)
    new = _save(NEW[case], tmp_path / "new", seed=2)
    ref = peft.PeftModel.from_pretrained(build_model("llama"), first)
    peft_hotswap_adapter(ref, str(new), adapter_name="default", torch_device="cpu")
    kit = peftkit.PeftModel.from_pretrained(build_model("llama"), first)
    peftkit.hotswap_adapter(kit, str(new), adapter_name="default", torch_device="cpu")
    torch.testing.assert_close(_output(kit), _output(ref))
    fresh = peftkit.PeftModel.from_pretrained(build_model("llama"), new)  # the new adapter alone
    torch.testing.assert_close(_output(kit), _output(fresh))
    kit.save_pretrained(tmp_path / "after")  # the config as held reloads to the same outputs
    reloaded = peftkit.PeftModel.from_pretrained(build_model("llama"), tmp_path / "after")
    torch.testing.assert_close(_output(reloaded), _output(kit))


def test_hotswap_onto_other_targets_is_refused_by_both(tmp_path: Path) -> None:
    first = _save(FIRST, tmp_path / "first", seed=1)
    new = _save({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj"]}, tmp_path / "new", seed=2)
    ref = peft.PeftModel.from_pretrained(build_model("llama"), first)
    with pytest.raises(RuntimeError, match="unexpected keys"):
        peft_hotswap_adapter(ref, str(new), adapter_name="default", torch_device="cpu")
    kit = peftkit.PeftModel.from_pretrained(build_model("llama"), first)
    before = _output(kit)
    with pytest.raises(HotswapError, match="targets other modules"):
        peftkit.hotswap_adapter(kit, str(new), adapter_name="default", torch_device="cpu")
    torch.testing.assert_close(_output(kit), before)


@pytest.mark.parametrize(("first", "second"), [("lora", "ia3"), ("ia3", "ia3"), ("ia3", "lora")])
def test_hotswap_of_other_methods_is_a_value_error_as_in_reference(first: str, second: str, tmp_path: Path) -> None:
    configs = {"lora": {"target_modules": ["q_proj"]}, "ia3": {"target_modules": ["q_proj"], "feedforward_modules": []}}
    for lib, swap in ((peft, peft_hotswap_adapter), (peftkit, peftkit.hotswap_adapter)):
        for name in (first, second):
            config = (lib.LoraConfig if name == "lora" else lib.IA3Config)(**configs[name])
            lib.get_peft_model(build_model("llama"), config).save_pretrained(tmp_path / lib.__name__ / name)
        model = lib.PeftModel.from_pretrained(build_model("llama"), tmp_path / lib.__name__ / first)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError):
            swap(model, str(tmp_path / lib.__name__ / second), adapter_name="default", torch_device="cpu")
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


EXPERTS: dict[str, Any] = {"target_modules": [], "target_parameters": ["experts.gate_up_proj", "experts.down_proj"]}


@pytest.mark.parametrize("kind", ["mixtral", "gpt_oss"])
@pytest.mark.parametrize("new_rank", [2, 4])
def test_expert_lora_hotswap_matches_reference(kind: str, new_rank: int, tmp_path: Path) -> None:
    """LoRA per expert at the same and at a larger rank (the reference writes a smaller rank's ``A`` into the
    leading rows, not each expert's block, so that case is checked against a fresh load only, in
    tests/integration/test_hotswap_experts.py)."""

    def save(r: int, alpha: int, path: Path, seed: int) -> Path:
        model = peft.get_peft_model(build_model(kind), peft.LoraConfig(r=r, lora_alpha=alpha, **EXPERTS))
        randomise_adapter(model, seed=seed)
        model.save_pretrained(path)
        return path

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model(**model_inputs(kind)).logits

    first, new = save(2, 4, tmp_path / "first", seed=1), save(new_rank, 3, tmp_path / "new", seed=2)
    ref = peft.PeftModel.from_pretrained(build_model(kind), first)
    peft_hotswap_adapter(ref, str(new), adapter_name="default", torch_device="cpu")
    kit = peftkit.PeftModel.from_pretrained(build_model(kind), first)
    peftkit.hotswap_adapter(kit, str(new), adapter_name="default", torch_device="cpu")
    torch.testing.assert_close(logits(kit), logits(ref))
    torch.testing.assert_close(logits(kit), logits(peftkit.PeftModel.from_pretrained(build_model(kind), new)))
