"""LN tuning against a formula oracle: while adapter ``a`` is active a layer norm computes
``g_a * (x - mean) / sqrt(var + eps) + b_a`` with ``a``'s own trained gain and bias; merging swaps the trained copy
in (exactly), several adapters, one-at-a-time rules, disabling, deleting, training with the base bit-identical,
save/load and config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tests.methods._training import adam_losses
from torch import nn

import peftkit as peft


def layer_norm(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return gain * (x - mean) / torch.sqrt(var + eps) + bias


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3))


def tuned(model: nn.Module, name: str = "default", seed: int = 1) -> peft.PeftModel:
    """``model`` with an LN tuning adapter ``name`` on the norm, its copy moved to random non-zero values."""
    if isinstance(model, peft.PeftModel):
        model.add_adapter(name, peft.LNTuningConfig(target_modules=["1"]))
        out = model
    else:
        out = peft.get_peft_model(model, peft.LNTuningConfig(target_modules=["1"]), adapter_name=name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in out.base_model.model[1].ln_tuning_layers[name].parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    return out


def oracle(base: nn.Sequential, model: peft.PeftModel, x: torch.Tensor, name: str) -> torch.Tensor:
    copy_ = model.base_model.model[1].ln_tuning_layers[name]
    return base[2](layer_norm(base[0](x), copy_.weight, copy_.bias))


def test_forward_matches_the_formula_and_only_the_copy_trains() -> None:
    base, x = net(), torch.randn(5, 4)
    model = tuned(net())
    torch.testing.assert_close(model(x), oracle(base, model, x, "default"))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "base_model.model.1.ln_tuning_layers.default.weight",
        "base_model.model.1.ln_tuning_layers.default.bias",
    ]
    model(x).sum().backward()
    assert model.base_model.model[1].ln_tuning_layers["default"].weight.grad.abs().sum() > 0


def test_merge_swaps_the_copy_in_and_unmerge_restores_exactly() -> None:
    base, x = net(), torch.randn(5, 4)
    model = tuned(net())
    tuned(model, "two", seed=2)
    expected, expected_two = model(x), oracle(base, model, x, "two")
    model.merge_adapter()
    torch.testing.assert_close(model(x), expected)
    assert model.base_model.model[1].merged_adapters == ["default"]
    with pytest.warns(UserWarning, match="unmerging it first"):  # PEFT's rule: one merged adapter at a time
        model.base_model.model[1].merge(adapter_names=["two"])
    torch.testing.assert_close(model(x), expected_two)
    model.unmerge_adapter()
    assert torch.equal(model.base_model.model[1].get_base_layer().weight, base[1].weight)
    with pytest.raises(peft.UsageError, match="one adapter at a time"):
        model.base_model.model[1].merge(adapter_names=["default", "two"])
    merged = copy.deepcopy(model).merge_and_unload()
    assert type(merged[1]) is nn.LayerNorm
    torch.testing.assert_close(merged(x), expected)


def test_several_adapters_disable_delete_and_mixed_batches() -> None:
    base, x = net(), torch.randn(4, 4)
    model = tuned(tuned(net()), "two", seed=2)
    for name in ("default", "two"):
        model.set_adapter(name)
        torch.testing.assert_close(model(x), oracle(base, model, x, name))
    model.base_model.model[1].set_adapter(["default", "two"])
    with pytest.raises(peft.UsageError, match="one adapter at a time"):
        model(x)
    model.set_adapter("default")
    with model.disable_adapter():
        torch.testing.assert_close(model(x), base(x))
    mixed = model.eval()(x, adapter_names=["two", "__base__", "default", "two"])
    for row, name in enumerate(("two", None, "default", "two")):
        want = base(x[row : row + 1]) if name is None else oracle(base, model, x[row : row + 1], name)
        torch.testing.assert_close(mixed[row : row + 1], want)
    model.delete_adapter("two")
    assert list(model.base_model.model[1].ln_tuning_layers) == ["default"]
    torch.testing.assert_close(model(x), oracle(base, model, x, "default"))


def test_training_lowers_the_loss_keeps_the_base_and_round_trips(tmp_path: Path) -> None:
    base = net()
    model = peft.get_peft_model(copy.deepcopy(base), peft.LNTuningConfig(target_modules=["1"]))
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    losses = adam_losses(model, lambda: nn.functional.mse_loss(model(x), y), steps=30, lr=0.05)
    assert losses[-1] < 0.8 * losses[0]
    inner = model.base_model.model
    for i, module in enumerate((inner[0], inner[1].base_layer, inner[2])):
        for key, value in module.state_dict().items():
            assert torch.equal(value, base[i].state_dict()[key]), (i, key)
    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert isinstance(loaded.base_model, peft.LNTuningModel)
    torch.testing.assert_close(loaded(x), model(x))


def test_llama_defaults_and_config_errors() -> None:
    from tests._tiny import build_model

    model = peft.get_peft_model(build_model("llama"), peft.LNTuningConfig(task_type="CAUSAL_LM"))
    assert model.peft_config["default"].target_modules == {"input_layernorm", "post_attention_layernorm", "norm"}
    with pytest.raises(peft.ConfigError, match="target_modules"):
        peft.LNTuningConfig(target_modules="(")
    with pytest.raises(peft.TargetingError):
        peft.get_peft_model(net(), peft.LNTuningConfig())  # no default for a plain module
