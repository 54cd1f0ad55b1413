"""VeRA against a formula oracle: ``y = W x + b + lambda_b * (B_s (lambda_d * (A_s x)))`` with ``A_s``, ``B_s`` the
top-left blocks of projections drawn Kaiming-uniform from one seeded CPU generator (``A`` first); merging,
several adapters, disabling, deleting, training with the base bit-identical, save/load and config errors."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from tests.methods._training import adam_losses
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit as peft
from peftkit.layers.shared import shared_tensors


def drawn(r: int, max_in: int, max_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's projections ``U(-b, b)``, ``b = sqrt(6 / fan_in)``: ``A (r, max_in)``, then ``B (max_out, r)``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.empty(r, max_in).uniform_(-math.sqrt(6 / max_in), math.sqrt(6 / max_in), generator=gen)
    b = torch.empty(max_out, r).uniform_(-math.sqrt(6 / r), math.sqrt(6 / r), generator=gen)
    return a, b


def mlp() -> nn.Sequential:
    """Two layers of different shapes (6 -> 5, GPT-2 Conv1D 5 -> 7): the projections span the largest of each."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), Conv1D(7, 5))


def vera(model: nn.Module, name: str = "default", seed: int = 4, **kw: object) -> peft.PeftModel:
    config = peft.VeraConfig(r=3, target_modules=["0", "2"], projection_prng_key=seed, init_weights=False, **kw)
    out = peft.get_peft_model(model, config, adapter_name=name)
    with torch.no_grad():  # fresh random non-zero vectors, not the initialisation
        for param in out.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape))
    return out


def oracle(base: nn.Sequential, model: peft.PeftModel, x: torch.Tensor, adapter: str, seed: int) -> torch.Tensor:
    a, b = drawn(3, 6, 7, seed)
    h = x
    for index in (0, 2):
        layer = model.base_model.model[index]
        lb, ld = layer.vera_lambda_b[adapter], layer.vera_lambda_d[adapter]
        out = layer.out_features
        h = base[index](h) + lb * ((ld * (h @ a[:, : h.shape[-1]].T)) @ b[:out].T)
        h = torch.tanh(h) if index == 0 else h
    return h


def test_forward_matches_the_formula_and_projections_are_drawn_as_specified() -> None:
    base, x = mlp(), torch.randn(4, 6)
    model = vera(mlp(), seed=11)
    held = shared_tensors(model.base_model.model).get("default")
    a, b = drawn(3, 6, 7, 11)
    assert torch.equal(held["vera_A"], a) and torch.equal(held["vera_B"], b)
    torch.testing.assert_close(model(x), oracle(base, model, x, "default", 11))
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    assert {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad} == {
        "vera_lambda_b",
        "vera_lambda_d",
    }


def test_merge_equals_unmerged_and_unmerge_restores() -> None:
    model, x = vera(mlp()), torch.randn(4, 6)
    expected, weights = model(x), [model.base_model.model[i].weight.clone() for i in (0, 2)]
    model.merge_adapter()
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(model.base_model.model[0].weight, weights[0])
    model.unmerge_adapter()
    for i, w in zip((0, 2), weights, strict=True):
        torch.testing.assert_close(model.base_model.model[i].weight, w)
    merged = copy.deepcopy(model).merge_and_unload()
    assert isinstance(merged[0], nn.Linear) and isinstance(merged[2], Conv1D)
    torch.testing.assert_close(merged(x), expected)


def test_several_adapters_disable_and_delete() -> None:
    base, x = mlp(), torch.randn(4, 6)
    model = vera(mlp())
    model.add_adapter("two", peft.VeraConfig(r=3, target_modules=["0", "2"], projection_prng_key=4, d_initial=0.5))
    with torch.no_grad():
        model.base_model.model[0].vera_lambda_b["two"].normal_()
    for name in ("default", "two"):
        model.set_adapter(name)
        torch.testing.assert_close(model(x), oracle(base, model, x, name, 4))
    with model.disable_adapter():
        torch.testing.assert_close(model(x), base(x))
    mixed = model.eval()(x, adapter_names=["default", "two", "__base__", "two"])
    for row, name in enumerate(("default", "two", None, "two")):
        want = base(x[row : row + 1]) if name is None else oracle(base, model, x[row : row + 1], name, 4)
        torch.testing.assert_close(mixed[row : row + 1], want)
    model.set_adapter("default")
    model.delete_adapter("two")
    assert set(shared_tensors(model.base_model.model).adapters) == {"default"}
    torch.testing.assert_close(model(x), oracle(base, model, x, "default", 4))


@pytest.mark.parametrize("save_projection", [True, False])
def test_training_lowers_the_loss_keeps_the_base_and_round_trips(tmp_path: Path, save_projection: bool) -> None:
    base = mlp()
    kw = {} if save_projection else {"save_projection": False}
    with pytest.warns(UserWarning, match="save_projection") if not save_projection else nullcontext():
        config = peft.VeraConfig(r=4, target_modules=["0", "2"], projection_prng_key=9, **kw)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    x, y = torch.randn(16, 6), torch.randn(16, 7)
    losses = adam_losses(model, lambda: nn.functional.mse_loss(model(x), y), steps=30, lr=0.05)
    assert losses[-1] < 0.8 * losses[0]
    for i in (0, 2):
        assert torch.equal(model.base_model.model[i].get_base_layer().weight, base[i].weight)
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert ({"base_model.vera_A", "base_model.vera_B"} <= keys) is save_projection
    with pytest.warns(UserWarning, match="save_projection") if not save_projection else nullcontext():
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(loaded(x), model(x))


def test_projection_key_and_save_projection_must_agree_between_adapters() -> None:
    model = vera(mlp())
    with pytest.raises(peft.ConfigError, match="projection_prng_key"):
        model.add_adapter("two", peft.VeraConfig(r=3, target_modules=["0"], projection_prng_key=5))
    assert "two" not in model.peft_config
    with pytest.raises(peft.ConfigError, match="r=3"):  # a further adapter shares the first one's projections
        model.add_adapter("two", peft.VeraConfig(r=2, target_modules=["0"], projection_prng_key=4))
    model.add_adapter("two", peft.VeraConfig(r=3, target_modules=["0"], projection_prng_key=4))
    held = shared_tensors(model.base_model.model)
    assert torch.equal(held.get("two")["vera_B"], held.get("default")["vera_B"])


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(peft.ConfigError, match="r must be"):
        peft.VeraConfig(r=0)
    with pytest.raises(peft.ConfigError, match="vera_dropout"):
        peft.VeraConfig(vera_dropout=1.0)
    with pytest.raises(peft.ConfigError, match="bias"):
        peft.VeraConfig(bias="lora_only")
    with pytest.raises(peft.ConfigError, match="d_initial"):
        peft.VeraConfig(d_initial=float("nan"))
    with pytest.raises(peft.TargetingError, match="cannot adapt"):
        peft.get_peft_model(nn.Sequential(nn.Embedding(3, 3)), peft.VeraConfig(target_modules=["0"]))
