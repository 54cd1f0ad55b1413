"""The method contract: what a method declares in its spec is what the core, the exports and the CLI use.

A toy method with a tensor held once per model (a frozen random projection ``P (max_out, max_in)`` shared
by every layer, as VeRA's) exercises the ``model_tensors`` hook through injection, forward, save, load,
``.to()`` and delete: ``y = W x + d * (P[:out, :in] x)`` per layer, ``d (out,)`` trainable per adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import pytest
import torch
from torch import nn

import peftkit
from peftkit import functional as F
from peftkit.io.state import adapter_state_dict, check_and_load
from peftkit.layers.base import AdapterLayer
from peftkit.layers.shared import HOLDER_NAME, shared_tensors
from peftkit.methods.lora.method import LORA
from peftkit.methods.spec import SPECS, MethodSpec
from peftkit.registry import METHODS, public_names
from peftkit.types import PeftType


class ProjectionLayer(AdapterLayer):
    """``y = W x + d * (P[:out, :in] x)`` with ``P`` shared by every layer of the model."""

    adapter_layer_names = ("proj_scale",)

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool = False) -> None:
        super().__init__(base_layer)
        self.proj_scale = nn.ParameterDict()

    def update_layer(self, adapter: str, facts: object, init_weights: bool = True) -> None:
        self.proj_scale[adapter] = nn.Parameter(torch.randn(self.get_base_layer().out_features))

    def adapt_output(self, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        base = self.get_base_layer()
        P = getattr(self, HOLDER_NAME).get(adapter)["projection"][: base.out_features, : base.in_features]
        return result + self.proj_scale[adapter] * (x @ P.T)


@dataclasses.dataclass
class Projections:
    """The toy method's model tensors: ``P`` from a seeded generator, saved unless ``config.r == 0``."""

    names: tuple[str, ...] = ("projection",)

    def create(self, config: object, targets: Mapping[str, nn.Module], held: object) -> dict[str, torch.Tensor]:
        rows = max(m.out_features for m in targets.values())
        cols = max(m.in_features for m in targets.values())
        return {"projection": torch.randn(rows, cols, generator=torch.Generator().manual_seed(7))}

    def saved(self, config: object) -> bool:
        return getattr(config, "r", 1) != 0


@pytest.fixture
def toy_method() -> Iterator[MethodSpec]:
    """The toy method registered in LoRA's place for one test (``PeftType`` members come from the catalog)."""
    spec = dataclasses.replace(
        LORA, layer_table={nn.Linear: ProjectionLayer}, layer_facts=lambda c, n, m: None, model_tensors=Projections()
    )
    SPECS[spec.peft_type] = spec
    try:
        yield spec
    finally:
        SPECS[spec.peft_type] = LORA


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5))


def _expected(model: nn.Sequential, x: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    h = x
    for index in (0, 2):
        layer = model[index]
        base = layer.get_base_layer()
        h = base(h) + layer.proj_scale["default"] * (h @ P[: base.out_features, : base.in_features].T)
        h = torch.relu(h) if index == 0 else h
    return h


def test_model_tensors_are_made_once_shared_saved_loaded_moved_and_deleted(toy_method: MethodSpec) -> None:
    config = peftkit.LoraConfig(target_modules=["0", "2"])
    model = _model()
    F.inject_adapter(model, config, "default")
    P = shared_tensors(model).get("default")["projection"]
    assert P.shape == (5, 4)
    x = torch.randn(6, 4)
    torch.testing.assert_close(model(x), _expected(model, x, P))
    assert not any(HOLDER_NAME in key for key in model.state_dict())  # held once, out of the model's keys

    state = adapter_state_dict(model, "default", config)
    assert set(state) == {"0.proj_scale", "2.proj_scale", "base_model.projection"}
    torch.testing.assert_close(state["base_model.projection"], P)

    other = _model()
    F.inject_adapter(other, config, "default", init_weights=False)
    shared_tensors(other).get("default")["projection"].zero_()
    check_and_load(other, "default", config, state)
    torch.testing.assert_close(other(x), model(x))

    model.to(torch.float64)  # the layers look the moved tensor up through the holder
    torch.testing.assert_close(model(x.double()), _expected(model, x.double(), P.double()))

    F.delete_adapter(model, "default")
    assert shared_tensors(model) is None and not any(isinstance(m, AdapterLayer) for m in model.modules())


def test_model_tensors_not_saved_stay_out_of_the_file_and_a_failed_injection_removes_them(
    toy_method: MethodSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = peftkit.LoraConfig(target_modules=["0", "2"])
    config.r = 0  # the toy rule: r == 0 -> projections not saved (set after LoraConfig's own checks)
    model = _model()
    F.inject_adapter(model, config, "default")
    assert set(adapter_state_dict(model, "default", config)) == {"0.proj_scale", "2.proj_scale"}
    x = torch.randn(2, 4)
    before = model(x)

    def refuse(self: ProjectionLayer, adapter: str, holder: nn.Module) -> None:
        raise RuntimeError("refused")

    monkeypatch.setattr(ProjectionLayer, "use_model_tensors", refuse)
    with pytest.raises(RuntimeError, match="refused"):
        F.inject_adapter(model, config, "two", active=["default"])
    assert set(shared_tensors(model).adapters) == {"default"}
    assert all(m.adapter_names() == {"default"} for _, m in F.iter_adapter_modules(model))
    torch.testing.assert_close(model(x), before)


def test_every_method_exports_its_public_names_and_has_its_peft_type() -> None:
    """The catalog, ``PeftType``, the registered specs and ``peftkit``'s exports agree."""
    assert [t.value for t in PeftType] == [spec.peft_type.value for spec in METHODS.values()]
    names = public_names()
    for spec in METHODS.values():
        assert spec.config_class.__name__ in names, spec.peft_type
        assert spec.config_class.__dataclass_fields__["peft_type"] is not None
    for name, obj in names.items():
        assert getattr(peftkit, name) is obj and name in peftkit.__all__
    assert peftkit.PeftConfig.from_dict({"peft_type": "IA3", "target_modules": ["q"], "feedforward_modules": []})


def test_bias_modes_come_from_the_spec() -> None:
    assert LORA.bias_rule(peftkit.LoraConfig(bias="lora_only")) == "adapter_layers"
    assert METHODS[PeftType("IA3")].bias_rule(peftkit.IA3Config(target_modules=["q"])) == "none"
    config = peftkit.LoraConfig()
    config.bias = "vera_only"  # type: ignore[assignment]  # a mode LoRA does not have
    with pytest.raises(peftkit.ConfigError, match="vera_only"):
        LORA.bias_rule(config)
