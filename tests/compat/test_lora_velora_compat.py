"""VeLoRA (``LoraConfig(velora_config=VeloraConfig(...))``) against the reference: from the same factors and the
same projection vector, one training step without dropout (peftkit draws its dropout masks from a seed, see
``tests/methods/test_lora_velora.py``) gives the same projection update and the same gradients (``lora_A``'s
from the compressed input, ``lora_B``'s and the input's exact) for every ``init_type``, on Linear and GPT-2
Conv1D; the same files (config JSON with the nested object, ``lora_velora_embed`` keys), counts and outputs both
ways, merged too; the same refusals (embeddings, convolutions, DoRA)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import peft
import pytest
import torch
from tests._tiny import build_model, model_inputs
from tests.compat._cross import Adapter, compat_tests

import peftkit

LLAMA: dict[str, Any] = {"r": 4, "target_modules": ["q_proj", "down_proj"], "velora_config": {"num_groups": 3}}
GPT2: dict[str, Any] = {"r": 4, "target_modules": ["c_attn", "c_fc"], "velora_config": {"init_type": "random"}}


def _train_step(model: Any, lib: ModuleType) -> None:
    """One training forward/backward (sets the batch-average projections) without changing the factors."""
    model.train()
    model(**model_inputs("llama"), labels=model_inputs("llama")["input_ids"]).loss.backward()


CROSS = [
    Adapter("llama_batch_average", "LoraConfig", LLAMA, train=_train_step),
    Adapter("gpt2_random", "LoraConfig", GPT2, model="gpt2"),
    Adapter("llama_once_other_name", "LoraConfig", {**LLAMA, "velora_config": {"init_type": "batch_average_once"}},
            name="other", train=_train_step),
]  # fmt: skip
test_cross_load, test_same_files_and_counts = compat_tests(CROSS, CROSS[1:2])


def _configs(fields: dict[str, Any]) -> tuple[Any, Any]:
    velora = fields["velora_config"]
    ref = peft.LoraConfig(**{**fields, "velora_config": peft.VeloraConfig(**velora)})
    kit = peftkit.LoraConfig(**{**fields, "velora_config": peftkit.VeloraConfig(**velora)})
    return ref, kit


def _same_start(kind: str, fields: dict[str, Any], tmp_path: Path) -> tuple[Any, Any]:
    """The reference model and a peftkit model loaded from the reference's file (same factors and projections)."""
    ref_config, _ = _configs(fields)
    ref = peft.get_peft_model(build_model(kind), ref_config)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if ".lora_" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    ref.save_pretrained(tmp_path)
    kit = peftkit.PeftModel.from_pretrained(build_model(kind), tmp_path, is_trainable=True)
    return ref, kit


def _step(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One training forward/backward; the gradients of the adapter tensors, of the input embeddings, and the
    projection vectors."""
    model.train()
    torch.manual_seed(0)  # the same dropout masks in the base model (GPT-2's)
    embeds = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, attention_mask=inputs.get("attention_mask")).logits
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    found = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    found.update({n: b.clone() for n, b in model.named_buffers() if "lora_velora_embed" in n})
    return {**found, "input": embeds.grad, "output": out.detach()}


@pytest.mark.parametrize("init_type", ["batch_average", "batch_average_once", "random"])
@pytest.mark.parametrize(("kind", "targets"), [("llama", ["q_proj", "down_proj"]), ("gpt2", ["c_attn", "c_fc"])])
def test_training_step_matches_the_reference(kind: str, targets: list[str], init_type: str, tmp_path: Path) -> None:
    fields = {"r": 4, "target_modules": targets, "velora_config": {"num_groups": 5, "init_type": init_type}}
    ref, kit = _same_start(kind, fields, tmp_path)
    for seed in (1, 2):  # the second batch shows whether the projection is renewed
        inputs = model_inputs(kind, seed=seed)
        ref.zero_grad()
        kit.zero_grad()
        expected, got = _step(ref, inputs), _step(kit, inputs)
        assert got.keys() == expected.keys() and any("lora_A" in k for k in got)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_eval_and_no_grad_run_plain_lora_and_keep_the_projection(tmp_path: Path) -> None:
    ref, kit = _same_start("llama", LLAMA, tmp_path)
    inputs = model_inputs("llama")
    ref.train()
    kit.train()
    with torch.no_grad():
        torch.testing.assert_close(kit(**inputs).logits, ref(**inputs).logits)
    kit.eval()
    kit(**inputs).logits.sum().backward()
    embeds = [b for n, b in kit.named_buffers() if "lora_velora_embed" in n]
    assert embeds and all(torch.count_nonzero(e) == 0 for e in embeds)


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"target_modules": ["embed_tokens"]}, "llama"),
        ({"target_modules": ["q_proj"], "use_dora": True}, "llama"),
        ({"target_modules": ["conv"]}, "conv"),
        ({"target_modules": ["0"]}, "bnb"),
    ],
)
def test_refusals_match_the_reference(fields: dict[str, Any], kind: str) -> None:
    base = {"conv": ConvNet, "bnb": _bnb_model}.get(kind, lambda: build_model(kind))()
    fields = {**fields, "velora_config": {"num_groups": 2}}
    ref_config, kit_config = _configs(fields)
    with pytest.raises(ValueError):
        peft.get_peft_model(copy.deepcopy(base), ref_config)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="velora"):
        peftkit.get_peft_model(base, kit_config)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert not any(isinstance(m, peftkit.tuners.tuners_utils.BaseTunerLayer) for m in base.modules())


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _bnb_model() -> torch.nn.Module:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False)
    layer.load_state_dict(torch.nn.Linear(16, 8).state_dict())
    layer(torch.randn(1, 16))  # the first forward quantizes the weight to int8
    model = torch.nn.Sequential(layer)
    model.is_loaded_in_8bit = True  # what transformers sets; the reference dispatches to its bitsandbytes layer on it
    return model


def test_status_reports_match_the_reference() -> None:
    """The projection buffers are neither trainable parameters nor counted as such."""
    ref_config, kit_config = _configs(LLAMA)
    ref = peft.get_peft_model(build_model("llama"), ref_config)
    kit = peftkit.get_peft_model(build_model("llama"), kit_config)
    assert asdict(peftkit.get_model_status(kit)) == asdict(peft.get_model_status(ref))
    assert [asdict(s) for s in peftkit.get_layer_status(kit)] == [asdict(s) for s in peft.get_layer_status(ref)]
