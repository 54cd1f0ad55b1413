"""BD-LoRA (``LoraConfig(use_bdlora=...)``, block-diagonal ``A`` or ``B``) against its formula: the packed map equals
the dense block-diagonal one, forward ``y = W x + b + s B A x`` with the dense factors, merge / unmerge /
``get_delta_weight``, initialisation, shapes, mixed batches, training keeps the block structure; refusals
(bad config values, unsupported layers and combinations) leave the model as it was."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftkit
from peftkit import BdLoraConfig
from peftkit.errors import ArgumentTypeError, ConfigError, HotswapError, UnsupportedError
from peftkit.layers.base import AdapterLayer
from peftkit.methods.lora.variants.block_diagonal import BlockDiagonalLinear
from peftkit.utils.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap


class MLP(nn.Module):
    def __init__(self, conv1d: bool = False) -> None:
        super().__init__()
        self.lin0 = Conv1D(24, 12) if conv1d else nn.Linear(12, 24)
        self.lin1 = Conv1D(8, 24) if conv1d else nn.Linear(24, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def dense(module: nn.Module) -> torch.Tensor:
    if isinstance(module, BlockDiagonalLinear):
        return torch.block_diag(*module.weight.detach().chunk(module.nblocks, dim=0))
    return module.weight.detach()


def adapted(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The formula: ``x W^T + b + s x A^T B^T`` with the dense (block-diagonal) factors."""
    base = layer.get_base_layer()
    weight = base.weight.T if layer.fan_in_fan_out else base.weight
    A, B = dense(layer.lora_A["default"]), dense(layer.lora_B["default"])
    return x @ weight.T + base.bias + layer.scaling["default"] * (x @ A.T @ B.T)


def randomise(model: nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(0.3 * torch.randn_like(param))


def bd_model(conv1d: bool = False, **bd: Any) -> peftkit.PeftModel:
    torch.manual_seed(0)
    fields = {"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 2, **bd}
    config = peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=["lin0", "lin1"], use_bdlora=fields)
    model = peftkit.get_peft_model(MLP(conv1d), config)
    randomise(model)
    return model


def test_public_at_peft_paths() -> None:
    import peftkit.tuners.lora.config as lora_config
    import peftkit.tuners.lora.variants as lora_variants

    assert lora_variants.BlockDiagonalLinear is BlockDiagonalLinear
    assert lora_config.BdLoraConfig is peftkit.tuners.BdLoraConfig is BdLoraConfig
    assert "BdLoraConfig" in peftkit.__all__


@pytest.mark.parametrize(("nblocks", "shape"), [(2, (3, 8)), (2, (2, 5, 8)), (4, (3, 8)), (4, (2, 1, 3, 8))])
def test_packed_map_equals_the_dense_block_diagonal_map(nblocks: int, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(8, 12, nblocks)
    x = torch.randn(*shape)
    blocks = layer.weight.detach().chunk(nblocks, dim=0)
    assert layer.weight.shape == (12, 8 // nblocks)
    torch.testing.assert_close(layer(x), x @ torch.block_diag(*blocks).T)
    torch.testing.assert_close(layer.weight_as_blockdiagonal_matrix(), torch.block_diag(*blocks))


def test_block_diagonal_initialisations() -> None:
    torch.manual_seed(0)
    a = BlockDiagonalLinear(64, 8, 4)
    bound = math.sqrt(6 / 16)  # Kaiming-uniform, a = 0, fan-in = in / nblocks
    assert a.weight.abs().max() <= bound and a.weight.abs().max() > 0.8 * bound
    assert torch.equal(BlockDiagonalLinear(8, 64, 4, init_zero=True).weight, torch.zeros(64, 2))


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_forward_is_lora_with_block_diagonal_factors(conv1d: bool) -> None:
    model = bd_model(conv1d)
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1
    assert lin0.lora_A["default"].weight.shape == (4, 6) and lin0.lora_B["default"].weight.shape == (24, 4)
    assert lin1.lora_A["default"].weight.shape == (4, 24) and lin1.lora_B["default"].weight.shape == (8, 2)
    x = torch.randn(5, 12)
    expected = adapted(lin1, torch.relu(adapted(lin0, x)))
    torch.testing.assert_close(model(x), expected)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), lin1.get_base_layer()(torch.relu(lin0.get_base_layer()(x))))


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_merge_unmerge_and_delta_weight(conv1d: bool) -> None:
    model = bd_model(conv1d)
    lin0 = model.base_model.model.lin0
    before = lin0.get_base_layer().weight.detach().clone()
    delta = lin0.scaling["default"] * dense(lin0.lora_B["default"]) @ dense(lin0.lora_A["default"])
    torch.testing.assert_close(lin0.get_delta_weight("default"), delta.T if conv1d else delta)
    x = torch.randn(5, 12)
    expected = model(x)
    model.merge_adapter()
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lin0.get_base_layer().weight, before + (delta.T if conv1d else delta))
    model.unmerge_adapter()
    torch.testing.assert_close(lin0.get_base_layer().weight, before)
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any(isinstance(m, AdapterLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-4)


def test_new_adapter_starts_at_zero_update_and_nblocks_one_is_plain_lora() -> None:
    torch.manual_seed(0)
    base, x = MLP(), torch.randn(4, 12)
    both = {"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin1"], "nblocks": 2}
    fresh = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["lin1"], use_bdlora=both))
    torch.testing.assert_close(fresh(x), base(x))  # the block-diagonal B starts at zero
    one = {"target_modules_bd_a": ["lin0"], "nblocks": 1}
    bd = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["lin0"], use_bdlora=one))
    plain = peftkit.get_peft_model(copy.deepcopy(base), peftkit.LoraConfig(target_modules=["lin0"]))
    randomise(bd)
    bd_layer, plain_layer = bd.base_model.model.lin0, plain.base_model.model.lin0
    with torch.no_grad():
        plain_layer.lora_A["default"].weight.copy_(bd_layer.lora_A["default"].weight)
        plain_layer.lora_B["default"].weight.copy_(bd_layer.lora_B["default"].weight)
    torch.testing.assert_close(bd(x), plain(x))
    torch.testing.assert_close(bd_layer.get_delta_weight("default"), plain_layer.get_delta_weight("default"))


def test_unmatched_layer_runs_plain_lora_without_match_strict() -> None:
    torch.manual_seed(0)
    config = peftkit.LoraConfig(
        target_modules=["lin0", "lin1"],
        use_bdlora={"target_modules_bd_b": ["lin1"], "nblocks": 2, "match_strict": False},
    )
    model = peftkit.get_peft_model(MLP(), config)
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1
    assert "default" not in lin0.lora_variant and isinstance(lin1.lora_B["default"], BlockDiagonalLinear)
    randomise(model)
    x = torch.randn(3, 12)
    torch.testing.assert_close(model(x), adapted(lin1, torch.relu(adapted(lin0, x))))


def test_training_updates_only_the_blocks_and_mixed_batches_route_per_sample() -> None:
    model = bd_model()
    trainable = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.lin0.lora_A.default.weight": (4, 6),
        "base_model.model.lin0.lora_B.default.weight": (24, 4),
        "base_model.model.lin1.lora_A.default.weight": (4, 24),
        "base_model.model.lin1.lora_B.default.weight": (8, 2),
    }
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(6, 12)
    model(x).pow(2).mean().backward()
    optimizer.step()
    lin0 = model.base_model.model.lin0
    torch.testing.assert_close(model(x), adapted(model.base_model.model.lin1, torch.relu(adapted(lin0, x))))
    model.add_adapter("plain", peftkit.LoraConfig(r=2, target_modules=["lin0", "lin1"], init_lora_weights=False))
    names = ["default", "plain", "__base__", "default", "plain", "default"]
    mixed = model.eval()(x, adapter_names=names)
    with model.disable_adapter():
        whole_batch = {"__base__": model(x)}
    for name in ("default", "plain"):
        model.set_adapter(name)
        whole_batch[name] = model(x)
    torch.testing.assert_close(mixed, torch.stack([whole_batch[name][i] for i, name in enumerate(names)]))


def test_save_and_load_round_trip(tmp_path: Any) -> None:
    model = bd_model().eval()
    x = torch.randn(3, 12)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)  # the base bd_model adapted
    loaded = peftkit.PeftModel.from_pretrained(MLP(), tmp_path)
    assert isinstance(loaded.peft_config["default"].use_bdlora, BdLoraConfig)
    assert loaded.peft_config["default"].use_bdlora.nblocks == 2
    torch.testing.assert_close(loaded(x), model(x))
    config = peftkit.LoraConfig.from_pretrained(tmp_path)
    assert config.use_bdlora == BdLoraConfig(["lin0"], ["lin1"], nblocks=2)


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"target_modules_bd_a": ["lin0"], "target_modules_bd_b": ["lin0"]}, ConfigError, "in both"),
        ({"nblocks": 0}, ConfigError, "nblocks"),
        ({"nblocks": "2"}, ConfigError, "nblocks"),
        ({"target_modules_bd_a": "lin0"}, ConfigError, "target_modules_bd_a"),
    ],
)
def test_bad_config_values_are_refused(fields: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BdLoraConfig(**fields)
    with pytest.raises(error, match=match):
        peftkit.LoraConfig(target_modules=["lin0"], use_bdlora=fields)


def test_bad_use_bdlora_type_is_refused_and_unknown_keys_are_warned() -> None:
    with pytest.raises(ArgumentTypeError, match="use_bdlora"):
        peftkit.LoraConfig(use_bdlora=["lin0"])  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="unknown keys"):
        config = peftkit.LoraConfig(use_bdlora={"nblocks": 2, "from_the_future": 1})
    assert config.use_bdlora == BdLoraConfig(nblocks=2)


@pytest.mark.parametrize(
    ("targets", "fields", "extra", "match"),
    [
        (["lin0", "lin1"], {"target_modules_bd_a": ["lin0"]}, {}, "matches neither"),
        (["lin0"], {"target_modules_bd_a": ["lin"], "target_modules_bd_b": ["0"]}, {}, "matches both"),
        (["lin0"], {"target_modules_bd_a": ["lin0"], "nblocks": 5}, {}, "not divisible"),
        (["lin0"], {"target_modules_bd_a": ["lin0"], "nblocks": 3}, {"r": 4}, "not divisible"),
        (["lin1"], {"target_modules_bd_b": ["lin1"], "nblocks": 3}, {"r": 6}, "not divisible"),
        (["lin1"], {"target_modules_bd_b": ["lin1"], "nblocks": 2}, {"lora_bias": True}, "lora_bias"),
        (["lin0"], {"target_modules_bd_a": ["lin0"], "nblocks": 2}, {"use_dora": True}, "use_dora"),
    ],
)
def test_refusals_leave_the_model_unchanged(
    targets: list[str], fields: dict[str, Any], extra: dict[str, Any], match: str
) -> None:
    base = MLP()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    config = peftkit.LoraConfig(target_modules=targets, use_bdlora=fields, **extra)
    with pytest.raises(ConfigError, match=match):
        peftkit.get_peft_model(base, config)
    assert not any(isinstance(m, AdapterLayer) for m in base.modules())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())


def int8_linear() -> nn.Module:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(12, 24, has_fp16_weights=False)
    layer.load_state_dict(nn.Linear(12, 24).state_dict())
    return layer.to("cpu")  # quantizes the weight


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("Embedding", lambda: nn.Embedding(10, 12)),
        ("Conv2d", lambda: nn.Conv2d(4, 8, 3)),
        ("Linear8bitLt", int8_linear),
    ],
)
def test_layer_types_other_than_dense_linear_are_refused(kind: str, make: Any) -> None:
    model = nn.ModuleDict({"lin0": nn.Linear(12, 24), "other": make()})
    config = peftkit.LoraConfig(target_modules=["other", "lin0"], use_bdlora={"target_modules_bd_b": ["other", "lin0"]})
    with pytest.raises(ConfigError, match=kind):
        peftkit.get_peft_model(model, config)
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())


def test_weighted_adapter_svd_is_a_plain_lora_of_the_dense_deltas_and_factor_types_are_refused() -> None:
    model = bd_model()
    model.add_adapter("second", copy.deepcopy(model.peft_config["default"]))
    randomise(model)
    lin0 = model.base_model.model.lin0
    expected = 0.5 * lin0.get_delta_weight("default") - 0.25 * lin0.get_delta_weight("second")
    model.add_weighted_adapter(["default", "second"], [0.5, -0.25], "svd", combination_type="svd", svd_rank=8)
    assert model.peft_config["svd"].use_bdlora is None and "svd" not in lin0.lora_variant
    torch.testing.assert_close(lin0.get_delta_weight("svd"), expected, atol=1e-5, rtol=1e-4)
    for kind in ("cat", "linear"):
        with pytest.raises(UnsupportedError, match="BD-LoRA"):
            model.add_weighted_adapter(["default", "second"], [0.5, 0.5], kind, combination_type=kind)
        assert kind not in model.peft_config and kind not in lin0.lora_A


def test_hotswap_takes_the_same_layout_and_rank_only(tmp_path: Any) -> None:
    first, second = bd_model(), bd_model()
    randomise(second)
    second.save_pretrained(tmp_path / "second")
    x = torch.randn(3, 12)
    hotswap_adapter(first, str(tmp_path / "second"), adapter_name="default")
    torch.testing.assert_close(first(x), second(x))
    plain = peftkit.get_peft_model(MLP(), peftkit.LoraConfig(r=4, target_modules=["lin0", "lin1"]))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(HotswapError):
        hotswap_adapter(first, str(tmp_path / "plain"), adapter_name="default")
    torch.testing.assert_close(first(x), second(x))
    with pytest.raises(HotswapError, match="cannot be padded"):
        prepare_model_for_compiled_hotswap(first, target_rank=8)
    assert first.base_model.model.lin0.lora_A["default"].weight.shape == (4, 6)
    torch.testing.assert_close(first(x), second(x))
