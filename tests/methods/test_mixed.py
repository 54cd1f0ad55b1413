"""Mixed-method models against a formula oracle: on one Linear carrying LoRA, LoHa and LoKr layers (stacked),
``y = x (W + sum of the active adapters' delta W)^T + b``; training reaches every active adapter while the base
stays bit-identical; methods that cannot mix, saving and mixed batches are refused with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit as peft

CONFIGS = {
    "lora": peft.LoraConfig(target_modules=["0"], r=2, lora_alpha=3, init_lora_weights=False),
    "loha": peft.LoHaConfig(target_modules=["0"], r=2, alpha=3, init_weights=False),
    "lokr": peft.LoKrConfig(target_modules=["0"], r=1, alpha=2, init_weights=False),
}


def stacked(order: list[str]) -> tuple[nn.Sequential, peft.PeftMixedModel]:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 8))
    twin = nn.Sequential(nn.Linear(12, 8))
    twin.load_state_dict(base.state_dict())
    model = peft.get_peft_model(twin, CONFIGS[order[0]], adapter_name=order[0], mixed=True)
    for name in order[1:]:
        model.add_adapter(name, CONFIGS[name])
    return base, model.eval()


def layers_by_adapter(model: peft.PeftMixedModel) -> dict[str, nn.Module]:
    """Each adapter's layer, walking the stack from the outermost."""
    found, layer = {}, model.base_model.model[0]
    while hasattr(layer, "base_layer"):
        for name in layer.adapter_names():
            found[name] = layer
        layer = layer.base_layer
    return found


@pytest.mark.parametrize("order", [["lora", "loha", "lokr"], ["lokr", "lora", "loha"]])
def test_output_is_the_base_plus_every_active_delta(order: list[str]) -> None:
    base, model = stacked(order)
    layers = layers_by_adapter(model)
    assert len({id(layer) for layer in layers.values()}) == 3, "one layer per method"
    x = torch.randn(5, 12)
    weight, bias = base[0].weight, base[0].bias
    for active in (order, order[1:], [order[0]]):
        model.set_adapter(active)
        delta = sum(layers[name].delta_weight(name).detach() for name in active)
        expected = x @ (weight + delta).T + bias
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model.set_adapter(order)
    merged = model.merge_and_unload()
    assert type(merged[0]) is nn.Linear
    delta = sum(layers[name].delta_weight(name).detach() for name in order)
    torch.testing.assert_close(merged(x), x @ (weight + delta).T + bias, atol=1e-5, rtol=1e-5)


def test_training_reaches_every_active_adapter_and_keeps_the_base() -> None:
    base, model = stacked(["lora", "loha", "lokr"])
    model.set_adapter(["lora", "loha", "lokr"])
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    owners = {a for a in ("lora", "loha", "lokr") for n in params if n.endswith(f".{a}") or f".{a}." in n}
    assert owners == {"lora", "loha", "lokr"}
    x, target = torch.randn(16, 12), torch.randn(16, 8)
    optimizer = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.mse_loss(model(x), target)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())
        optimizer.step()
    assert losses[-1] < losses[0]
    inner = model.base_model.model[0].get_base_layer()
    assert torch.equal(inner.weight, base[0].weight) and torch.equal(inner.bias, base[0].bias)


def test_refusals(tmp_path: Path) -> None:
    _, model = stacked(["lora", "loha"])
    with pytest.raises(peft.ConfigError, match="IA3 adapter cannot join a mixed model"):
        model.add_adapter("ia3", peft.IA3Config(target_modules=["0"], feedforward_modules=[]))
    assert set(model.peft_config) == {"lora", "loha"}
    with pytest.raises(peft.UnsupportedError, match="cannot be saved"):
        model.save_pretrained(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(peft.UnsupportedError, match="no mixed batches"):
        model(torch.randn(2, 12), adapter_names=["lora", "loha"])
    plain = peft.get_peft_model(nn.Sequential(nn.Linear(12, 8)), CONFIGS["lora"])
    with pytest.raises(peft.ConfigError, match="Cannot combine a LOHA adapter with LORA adapters"):
        plain.add_adapter("loha", CONFIGS["loha"])
