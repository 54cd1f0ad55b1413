"""KaSA (``kasa_config``, :mod:`peftkit.methods.lora.variants.kasa`) against its formulas: the base keeps its
``k - r`` largest singular components, ``y = W' x + s B (d * A x)``, merge adds ``s (B * d) A``, the auxiliary
loss ``beta * sum(d^2) + gamma * (||B^T B - I|| + ||A A^T - I||)``; the config's types and values."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import ConfigError, UnsupportedError


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(16, 12)
        self.lin1 = nn.Linear(12, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def kasa_model(r: int = 4, **kasa: float) -> tuple[MLP, peftkit.PeftModel]:
    torch.manual_seed(0)
    base = MLP()
    config = peftkit.LoraConfig(
        target_modules=["lin0", "lin1"],
        r=r,
        lora_alpha=6,
        init_lora_weights=False,
        kasa_config=peftkit.KasaConfig(**kasa),
    )
    return base, peftkit.get_peft_model(copy.deepcopy(base), config)


def factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_diag["default"]


def test_base_keeps_its_largest_singular_components() -> None:
    base, model = kasa_model(r=4)
    for name in ("lin0", "lin1"):
        before = torch.linalg.svdvals(getattr(base, name).weight.detach())
        after = torch.linalg.svdvals(getattr(model.base_model.model, name).base_layer.weight.detach())
        keep = before.shape[0] - 4
        torch.testing.assert_close(after[:keep], before[:keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after[keep:], torch.zeros(4), atol=1e-5, rtol=0)


def test_forward_merge_and_delta_follow_the_formula() -> None:
    _, model = kasa_model()
    torch.manual_seed(1)
    x = torch.randn(5, 16)
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1
    s = 6 / 4

    def adapted(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        A, B, d = factors(layer)
        base = layer.base_layer
        out = h @ base.weight.T + (base.bias if base.bias is not None else 0)
        return out + s * ((h @ A.T) * d) @ B.T

    with torch.no_grad():
        expected = adapted(lin1, torch.relu(adapted(lin0, x)))
        torch.testing.assert_close(model(x), expected)
        A, B, d = factors(lin1)
        torch.testing.assert_close(lin1.get_delta_weight("default"), s * B @ torch.diag(d) @ A)
        truncated = lin1.base_layer.weight.clone()
        model.merge_adapter()
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(lin1.base_layer.weight, truncated, atol=1e-6, rtol=0)


def test_lora_diag_trains_and_is_saved(tmp_path: Path) -> None:
    _, model = kasa_model()
    model(torch.randn(3, 16)).sum().backward()
    diag = model.base_model.model.lin0.lora_diag["default"]
    assert diag.requires_grad and diag.grad is not None and diag.shape == (4,)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["kasa_config"] == {"beta": 1e-4, "gamma": 1e-3}
    assert "base_model.model.lin0.lora_diag" in peftkit.get_peft_model_state_dict(model)
    loaded = peftkit.LoraConfig.from_pretrained(str(tmp_path))
    assert loaded.kasa_config == peftkit.KasaConfig()


def test_auxiliary_loss_is_the_closed_form() -> None:
    _, model = kasa_model(beta=0.3, gamma=0.7)
    expected = torch.tensor(0.0)
    for layer in (model.base_model.model.lin0, model.base_model.model.lin1):
        A, B, d = factors(layer)
        eye = torch.eye(4)
        ortho = torch.sqrt(((B.T @ B - eye) ** 2).sum()) + torch.sqrt(((A @ A.T - eye) ** 2).sum())
        expected = expected + 0.3 * (d**2).sum() + 0.7 * ortho
    torch.testing.assert_close(model._get_kasa_loss(), expected)
    model.base_model.set_adapter([])
    assert model._get_kasa_loss() == 0.0


def test_config_values_and_types() -> None:
    assert peftkit.LoraConfig(kasa_config={"beta": 0.5}).kasa_config == peftkit.KasaConfig(beta=0.5, gamma=1e-3)
    with pytest.raises(TypeError, match="KasaConfig"):
        peftkit.LoraConfig(kasa_config=123)
    with pytest.warns(UserWarning, match="unknown keys"):  # a newer version's key: dropped, as PEFT drops it
        assert peftkit.LoraConfig(kasa_config={"betta": 0.5}).kasa_config == peftkit.KasaConfig()
    for field in ("beta", "gamma"):
        with pytest.raises(ConfigError, match=f"KasaConfig.{field}.*non-negative"):
            peftkit.KasaConfig(**{field: -1.0})


def test_use_dora_is_refused() -> None:
    config = peftkit.LoraConfig(target_modules=["lin1"], r=2, use_dora=True, kasa_config=peftkit.KasaConfig())
    with pytest.raises(ConfigError, match="do not combine"):
        peftkit.get_peft_model(MLP(), config)


def test_add_weighted_adapter_refuses_kasa_adapters() -> None:
    _, model = kasa_model()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(UnsupportedError, match="KaSA"):
        model.add_weighted_adapter(["default"], [1.0], "combined", combination_type="linear")
    assert "combined" not in model.peft_config
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_base_on_meta_is_truncated_when_first_run() -> None:
    torch.manual_seed(0)
    real = MLP()
    with torch.device("meta"):
        base = MLP()
    config = peftkit.LoraConfig(target_modules=["lin0", "lin1"], r=4, lora_alpha=6, kasa_config=peftkit.KasaConfig())
    model = peftkit.get_peft_model(base, config).to_empty(device="cpu")
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1
    with torch.no_grad():
        for layer, source in ((lin0, real.lin0), (lin1, real.lin1)):
            layer.base_layer.load_state_dict(source.state_dict())
            for tensor in factors(layer):  # A, B, lora_diag: non-zero, so the adapter changes the output
                tensor.normal_()
    x = torch.randn(3, 16)
    with torch.no_grad():
        first = model(x)
        assert lin0._kasa_pending == set()
        truncated = {n: getattr(model.base_model.model, n).base_layer.weight.clone() for n in ("lin0", "lin1")}
        torch.testing.assert_close(model(x), first, atol=1e-5, rtol=1e-5)  # the first run already saw W'
    for name in ("lin0", "lin1"):
        kept = torch.linalg.svdvals(truncated[name])
        torch.testing.assert_close(kept[:-4], torch.linalg.svdvals(getattr(real, name).weight.detach())[:-4])
        torch.testing.assert_close(kept[-4:], torch.zeros(4), atol=1e-5, rtol=0)
