"""``low_cpu_mem_usage=True`` and meta-device bases: injection allocates adapters on ``meta``; loading assigns the
file's values (nothing left on ``meta``); adapters injected on a meta base materialise with the base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.distributed._common import tiny_llama
from transformers import LlamaForCausalLM

import peftkit
from peftkit.errors import CheckpointError

TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]


def config(**kwargs: object) -> peftkit.LoraConfig:
    return peftkit.LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False, **kwargs)


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def meta_llama() -> LlamaForCausalLM:
    with torch.device("meta"):
        return tiny_llama()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    root = tmp_path_factory.mktemp("meta")
    torch.manual_seed(11)
    model = peftkit.get_peft_model(tiny_llama(), config())
    model.save_pretrained(root)
    with torch.no_grad():
        logits = model(input_ids=_ids()).logits
    return root, peftkit.get_peft_model_state_dict(model), logits


@pytest.mark.parametrize("how", ["get_peft_model", "inject_adapter_in_model", "add_adapter"])
def test_low_cpu_mem_usage_injects_on_meta(how: str) -> None:
    base = tiny_llama()
    if how == "get_peft_model":
        model = peftkit.get_peft_model(base, config(), low_cpu_mem_usage=True)
    elif how == "inject_adapter_in_model":
        model = peftkit.inject_adapter_in_model(config(), base, low_cpu_mem_usage=True)
    else:
        model = peftkit.get_peft_model(base, config())
        model.add_adapter("second", config(), low_cpu_mem_usage=True)
    tensors = {n: p for n, p in adapter_tensors(model).items() if how != "add_adapter" or ".second" in n}
    assert len(tensors) == 2 * 3 * 2 + 2 and all(p.is_meta for p in tensors.values())  # 2 layers x 3 targets, embedding
    assert not any(p.is_meta for n, p in model.named_parameters() if "lora_" not in n)  # the base is untouched


@pytest.mark.parametrize("base_on", ["meta", "cpu"])
def test_from_pretrained_low_cpu_mem_usage_fills_the_file_values(saved, base_on: str) -> None:
    directory, expected, logits = saved
    base = meta_llama() if base_on == "meta" else tiny_llama()
    model = peftkit.PeftModel.from_pretrained(base, directory, low_cpu_mem_usage=True)
    tensors = adapter_tensors(model)
    assert tensors and not any(p.is_meta for p in tensors.values())
    loaded = peftkit.get_peft_model_state_dict(model)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    if base_on == "cpu":
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=_ids()).logits, logits)


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))


def test_load_adapter_low_cpu_mem_usage_on_meta_base_and_transformers_model(saved) -> None:
    directory, expected, _ = saved
    model = peftkit.get_peft_model(meta_llama(), config())  # adapters on a meta base: meta as well
    assert all(p.is_meta for p in adapter_tensors(model).values())
    model.load_adapter(directory, adapter_name="other", low_cpu_mem_usage=True)
    other = peftkit.get_peft_model_state_dict(model, adapter_name="other")
    assert all(torch.equal(other[k], v) for k, v in expected.items())
    assert not any(p.is_meta for n, p in adapter_tensors(model).items() if ".other" in n)

    hf_model = peftkit.enable_adapter_methods(meta_llama())
    hf_model.load_adapter(str(directory), adapter_name="x", low_cpu_mem_usage=True)
    state = hf_model.get_adapter_state_dict("x")
    assert all(torch.equal(state[k.removeprefix("base_model.model.")], v) for k, v in expected.items())
    assert not any(p.is_meta for p in adapter_tensors(hf_model).values())


def test_meta_base_materialises_with_its_adapters(saved) -> None:
    """The FSDP-style flow: build on meta, inject, ``to_empty``, then load the full state dict of a real model."""
    directory, _, logits = saved
    real = peftkit.PeftModel.from_pretrained(tiny_llama(), directory)
    model = peftkit.get_peft_model(meta_llama(), config())
    model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(real.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k or "inv_freq" in k for k in missing)
    model.get_base_model().model.rotary_emb = real.get_base_model().model.rotary_emb  # non-persistent buffers
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_ids()).logits, logits)


def test_saving_meta_adapters_raises_and_writes_nothing(tmp_path: Path) -> None:
    model = peftkit.get_peft_model(tiny_llama(), config(), low_cpu_mem_usage=True)
    with pytest.raises(CheckpointError, match="meta device"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
