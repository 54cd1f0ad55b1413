"""VeLoRA (``methods/lora/variants/velora*.py``) against short formulas: the sub-token compression and
reconstruction, the gradients of one training step (``lora_A``'s from the rebuilt input, ``lora_B``'s and the
input's exact), the projection update per ``init_type``, what autograd keeps, the config (dicts, JSON, bad
values), adapters added / deleted / merged, and the refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit
from peftkit import LoraConfig, VeloraConfig
from peftkit.errors import ArgumentTypeError, ConfigError, TargetingError
from peftkit.methods.lora.autograd import DropMask, new_seed
from peftkit.methods.lora.variants.velora_math import VeloraFunction, compress_activations, reconstruct_activations

IN, OUT, R = 10, 6, 3


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0 = nn.Linear(IN, OUT)
        self.emb = nn.Embedding(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin0(x)


def velora_model(init_type: str = "random", num_groups: int = 4, scale: float = 0.5, **extra: object) -> nn.Module:
    torch.manual_seed(0)
    fields: dict[str, object] = {"r": R, "lora_alpha": 6, "target_modules": ["lin0"], "init_lora_weights": False}
    velora = VeloraConfig(num_groups=num_groups, scale=scale, init_type=init_type)
    config = LoraConfig(**{**fields, **extra}, velora_config=velora)  # type: ignore[arg-type]
    return peftkit.get_peft_model(MLP(), config)


def rebuilt_input(x: torch.Tensor, v: torch.Tensor, num_groups: int, scale: float) -> torch.Tensor:
    """The formula, sub-token by sub-token: ``scale * <x_g, v> v`` for each zero-padded group ``x_g``."""
    dim = math.ceil(x.shape[-1] / num_groups)
    padded = torch.cat([x, x.new_zeros(*x.shape[:-1], num_groups * dim - x.shape[-1])], dim=-1)
    groups = [padded[..., g * dim : (g + 1) * dim] for g in range(num_groups)]
    return torch.cat([scale * (group @ v)[..., None] * v for group in groups], dim=-1)[..., : x.shape[-1]]


def test_compression_and_reconstruction_follow_the_formula() -> None:
    x, v = torch.randn(2, 3, 11), torch.nn.functional.normalize(torch.randn(3), dim=0)
    compressed = compress_activations(x, v, num_groups=4)
    assert compressed.shape == (6, 4)
    rebuilt = reconstruct_activations(compressed, v, in_features=11, velora_scale=0.7)
    torch.testing.assert_close(rebuilt, rebuilt_input(x, v, 4, 0.7).reshape(6, 11))


def test_training_step_gradients_follow_the_formula() -> None:
    model = velora_model()
    layer = model.base_model.model.lin0
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    v = layer.lora_velora_embed["default"]
    x, g = torch.randn(2, 5, IN, requires_grad=True), torch.randn(2, 5, OUT)
    model.train()
    out = model(x)
    out.backward(g)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    torch.testing.assert_close(out, x @ (W + s * B @ A).T + b)  # the forward is LoRA's
    x_hat = rebuilt_input(x.detach(), v, 4, 0.5)
    g2, x2 = g.reshape(-1, OUT), x.detach().reshape(-1, IN)
    torch.testing.assert_close(A.grad, s * (g2 @ B).T @ x_hat.reshape(-1, IN))
    torch.testing.assert_close(B.grad, s * g2.T @ (x2 @ A.T))
    torch.testing.assert_close(x.grad, g @ (W + s * B @ A))
    assert not torch.allclose(A.grad, s * (g2 @ B).T @ x2, atol=1e-3)  # not plain LoRA's gradient


@pytest.mark.parametrize("p", [0.1, 0.3])  # CPU: dropped positions drawn sparsely (p <= 0.2) or a dense mask
def test_dropout_mask_is_drawn_again_from_its_seed_not_kept(p: float) -> None:
    model = velora_model("batch_average", lora_dropout=p)
    layer = model.base_model.model.lin0
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    x, g = torch.randn(4, 5, IN, requires_grad=True), torch.randn(4, 5, OUT)
    torch.manual_seed(7)
    seed = new_seed()  # the seed the layer draws for its mask
    mask = DropMask(torch.empty(20, IN), p, seed).zero_(torch.ones(20, IN)).view(4, 5, IN)
    dropped = x.detach() * mask / (1 - p)
    model.train()
    torch.manual_seed(7)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        out = model(x)
    out.backward(g)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    assert 0 < int(mask.sum()) < mask.numel()
    torch.testing.assert_close(out, x.detach() @ W.T + b + s * dropped @ A.T @ B.T)
    v = layer.lora_velora_embed["default"]
    torch.testing.assert_close(v, rebuilt_mean(dropped))  # the projection comes from the dropped input
    x_hat = rebuilt_input(dropped, v, 4, 0.5).reshape(-1, IN)
    torch.testing.assert_close(A.grad, s * (g.reshape(-1, OUT) @ B).T @ x_hat)
    torch.testing.assert_close(x.grad, g @ W + s * (g @ B @ A) * mask / (1 - p))
    assert (4, 5, IN) not in saved and (20, IN) not in saved  # neither the mask nor a dropped copy


def test_projection_update_per_init_type() -> None:
    for init_type, renewed in (("batch_average", True), ("batch_average_once", False), ("random", False)):
        model = velora_model(init_type)
        layer = model.base_model.model.lin0
        start = layer.lora_velora_embed["default"].clone()
        model.eval()
        model(torch.randn(3, IN)).sum().backward()  # eval: plain LoRA, no update
        assert torch.equal(layer.lora_velora_embed["default"], start)
        model.train()
        first, second = torch.randn(3, IN), torch.randn(3, IN) + 2
        model(first)
        expected = start if init_type == "random" else rebuilt_mean(first)
        torch.testing.assert_close(layer.lora_velora_embed["default"], expected)
        model(second)
        torch.testing.assert_close(layer.lora_velora_embed["default"], rebuilt_mean(second) if renewed else expected)
        assert layer.lora_velora_initialized["default"] is True


def rebuilt_mean(x: torch.Tensor, num_groups: int = 4) -> torch.Tensor:
    """``batch_average``'s vector: the normalised mean of all zero-padded sub-tokens of ``x``."""
    dim = math.ceil(x.shape[-1] / num_groups)
    padded = torch.cat([x, x.new_zeros(*x.shape[:-1], num_groups * dim - x.shape[-1])], dim=-1)
    mean = padded.reshape(-1, dim).mean(0)
    return mean / mean.norm()


def test_backward_keeps_the_compressed_input_instead_of_the_input() -> None:
    saved: list[tuple[int, ...]] = []
    x, weight = torch.randn(4, 7, 64, requires_grad=True), torch.randn(3, 64, requires_grad=True)
    embed = torch.nn.functional.normalize(torch.randn(4), dim=0)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = VeloraFunction.apply(x, weight, None, embed, 16, 1.0)
    out.sum().backward()
    assert (28, 16) in saved and (4, 7, 64) not in saved and (28, 64) not in saved


def test_config_from_dict_json_and_bad_values(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="unknown keys"):
        config = LoraConfig(target_modules=["lin0"], velora_config={"num_groups": 5, "init_type": "random", "new": 1})
    assert config.velora_config == VeloraConfig(num_groups=5, init_type="random")
    config.save_pretrained(tmp_path)
    loaded = LoraConfig.from_pretrained(tmp_path)
    assert loaded.velora_config == config.velora_config and loaded.to_dict()["velora_config"]["scale"] == 1.0
    for bad in ({"num_groups": 0}, {"num_groups": True}, {"scale": -1.0}, {"scale": math.inf}, {"init_type": "x"}):
        with pytest.raises(ConfigError, match="VeloraConfig"):
            VeloraConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="velora_config"):
        LoraConfig(velora_config=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="velora_config"):
        peftkit.AdaLoraConfig(total_step=10, velora_config=VeloraConfig())


def test_second_adapter_delete_and_merge() -> None:
    model = velora_model("batch_average")
    model.add_adapter("plain", LoraConfig(r=2, target_modules=["lin0"], init_lora_weights=False))
    layer = model.base_model.model.lin0
    assert set(layer.lora_velora_embed.keys()) == {"default"} and "plain" not in layer.lora_variant
    model.base_model.set_adapter(["default", "plain"])
    assert layer.lora_A["default"].weight.requires_grad and not layer.lora_velora_embed["default"].requires_grad
    x = torch.randn(3, IN)
    model.eval()
    expected = model(x)
    merged = model.merge_and_unload(adapter_names=["default", "plain"])
    torch.testing.assert_close(merged(x), expected)
    other = velora_model()
    other.add_adapter("plain", LoraConfig(r=2, target_modules=["lin0"]))
    other.delete_adapter("default")
    layer = other.base_model.model.lin0
    assert len(layer.lora_velora_embed) == 0 and layer.lora_velora_scale == {} and layer.lora_velora_num_groups == {}
    assert "lora_velora_embed" not in "".join(other.state_dict())


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"target_modules": ["emb"]}, TargetingError, "nn.Linear"),
        ({"use_dora": True}, ConfigError, "use_dora"),
        ({"init_lora_weights": "mica"}, ConfigError, "mica"),
        ({"target_modules": [], "target_parameters": ["lin0.weight"]}, ConfigError, "velora"),
    ],
)
def test_refusals(extra: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        velora_model(**extra)


def test_hotswap_replaces_factors_and_projection(tmp_path: Path) -> None:
    from peftkit.utils.hotswap import hotswap_adapter

    first, second = velora_model(), velora_model()
    torch.manual_seed(1)
    with torch.no_grad():
        for param in second.parameters():
            param.add_(torch.randn_like(param))
        second.base_model.model.lin0.lora_velora_embed["default"] = torch.nn.functional.normalize(torch.randn(3), dim=0)
        second.base_model.model.lin0.base_layer.load_state_dict(first.base_model.model.lin0.base_layer.state_dict())
    second.save_pretrained(tmp_path)
    hotswap_adapter(first, str(tmp_path), adapter_name="default")
    x = torch.randn(3, IN)
    torch.testing.assert_close(first.eval()(x), second.eval()(x))
    layer, other = first.base_model.model.lin0, second.base_model.model.lin0
    assert torch.equal(layer.lora_velora_embed["default"], other.lora_velora_embed["default"])
    velora_model(scale=2.0).save_pretrained(tmp_path / "other_scale")
    with pytest.raises(peftkit.HotswapError, match="same variant"):  # the slot keeps its settings: refused
        hotswap_adapter(first, str(tmp_path / "other_scale"), adapter_name="default")
