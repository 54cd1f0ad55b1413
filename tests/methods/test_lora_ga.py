"""LoRA-GA (``init_lora_weights="lora_ga"`` after ``preprocess_loraga``) against short formulas: the estimated
gradient is the mean weight gradient of the backward passes; ``A`` / ``B`` span the gradient's singular directions
the config names, scaled as documented; the base weight absorbs ``s B A`` so the model starts as its base; the
model's state is restored after the estimation; the cache; and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import CheckpointError, ConfigError
from peftkit.methods.lora.loraga_init import GRAD_ATTR


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 8)).to(dtype)


def batches(n: int = 3, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randn(4, 12, generator=gen).to(dtype) for _ in range(n)]


def step_for(model: nn.Module, data: list[torch.Tensor]):  # type: ignore[no-untyped-def]
    def train_step() -> None:
        for x in data:
            model(x).pow(2).mean().backward()

    return train_step


def ga_config(**options: object) -> peftkit.LoraConfig:
    return peftkit.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["0", "2"],
        init_lora_weights="lora_ga",
        lora_ga_config=peftkit.LoraGAConfig(**options),  # type: ignore[arg-type]
    )


def mean_gradients(model: nn.Module, data: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights' gradients summed over ``data``'s backward passes, divided by their number."""
    copy = mlp()
    copy.load_state_dict(model.state_dict())
    for x in data:
        copy(x).pow(2).mean().backward()
    return {name: copy.get_submodule(name).weight.grad / len(data) for name in ("0", "2")}


def test_gradient_is_the_mean_over_backward_passes_and_the_model_is_restored() -> None:
    model, data = mlp().eval(), batches()
    model[0].bias.requires_grad_(False)
    earlier = torch.full_like(model[2].weight, 3.0)
    model[2].weight.grad = earlier
    expected = mean_gradients(model, data)
    peftkit.preprocess_loraga(model, ga_config(), step_for(model, data))
    for name in ("0", "2"):
        torch.testing.assert_close(getattr(model.get_submodule(name), GRAD_ATTR), expected[name])
    assert not model.training and model[0].bias.requires_grad is False and model[2].bias.requires_grad
    assert model[2].weight.grad is earlier and model[0].weight.grad is None


def test_a_failing_train_step_leaves_the_model_as_it_was() -> None:
    model = mlp().eval()
    model[0].weight.requires_grad_(False)

    def failing() -> None:
        model(batches(1)[0]).sum().backward()
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader"):
        peftkit.preprocess_loraga(model, ga_config(), failing)
    assert not model.training and not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert model[0].weight.grad is None and not hasattr(model[0], GRAD_ATTR)


def injected(options: dict[str, object], grad: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A one-layer model given the gradient ``grad`` and a LoRA-GA adapter; also the base weight before."""
    model = nn.Sequential(nn.Linear(12, 10))
    before = model[0].weight.detach().clone()
    setattr(model[0], GRAD_ATTR, grad)
    config = peftkit.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["0"],
        init_lora_weights="lora_ga",
        lora_ga_config=peftkit.LoraGAConfig(**options),  # type: ignore[arg-type]
    )
    return peftkit.get_peft_model(model, config), before


def projector(columns: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(columns)
    return q @ q.T


@pytest.mark.parametrize(
    ("direction", "a_index", "b_index"),
    [("ArB2r", [0, 1], [2, 3]), ("A2rBr", [2, 3], [0, 1]), ("ArBr", [1, 3], [0, 2])],
)
def test_factors_take_the_named_singular_directions(direction: str, a_index: list[int], b_index: list[int]) -> None:
    torch.manual_seed(1)
    grad = torch.randn(10, 12)
    model, before = injected({"direction": direction, "scale": "unit"}, grad)
    layer = model.base_model.model[0]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    U, S, Vh = torch.linalg.svd(grad)
    torch.testing.assert_close(projector(A.T), Vh[a_index].T @ Vh[a_index], atol=1e-5, rtol=0)
    torch.testing.assert_close(B.T @ B, torch.diag(S[b_index] ** 2), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(projector(B), U[:, b_index] @ U[:, b_index].T, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.base_layer.weight + 2.0 * B @ A, before, atol=1e-6, rtol=0)
    assert not hasattr(layer.base_layer, GRAD_ATTR)


def test_the_model_starts_as_its_base_and_trains_from_the_gradient_direction() -> None:
    model, data = mlp(), batches()
    x = torch.randn(3, 12)
    with torch.no_grad():
        expected = model(x)
    config = ga_config()
    peftkit.preprocess_loraga(model, config, step_for(model, data))
    peft_model = peftkit.get_peft_model(model, config)
    torch.testing.assert_close(peft_model(x), expected, atol=1e-5, rtol=0)
    B = peft_model.base_model.model[0].lora_B["default"].weight
    assert B.abs().min() > 0 and B.requires_grad


@pytest.mark.parametrize("scale", ["stable", "weight_svd", "gd_scale"])
def test_scales_rescale_the_unit_factors(scale: str) -> None:
    torch.manual_seed(2)
    grad = torch.randn(10, 12)
    unit, _ = injected({"scale": "unit"}, grad.clone())
    scaled, before = injected({"scale": scale, "stable_gamma": 9}, grad.clone())
    (A1, B1), (A2, B2) = (m.base_model.model[0].factor_tensors("default") for m in (unit, scaled))
    s = 2.0
    if scale == "stable":
        factor_a, factor_b = 1.0, 10**0.25 / 3
    elif scale == "weight_svd":
        factor_a, factor_b = 1.0, float(torch.linalg.svdvals(before)[0] / torch.linalg.svdvals(B1.detach())[0])
    else:
        factor_a, factor_b = 1 / s, 1 / s
    torch.testing.assert_close((A2 @ A2.T).trace(), factor_a**2 * (A1 @ A1.T).trace(), rtol=1e-4, atol=0)
    rtol = 1e-2 if scale == "weight_svd" else 1e-5  # sigma_1(W) estimated by svd_lowrank(q=r, niter=4)
    torch.testing.assert_close(torch.linalg.norm(B2), factor_b * torch.linalg.norm(B1), rtol=rtol, atol=0)


def test_cache_is_written_then_read_instead_of_training(tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "grads.pt"
    first, data = mlp(), batches()
    peftkit.preprocess_loraga(first, ga_config(), step_for(first, data), cache_file=cache)
    stored = torch.load(cache, weights_only=True)
    assert sorted(stored) == [f"0.{GRAD_ATTR}", f"2.{GRAD_ATTR}"]

    def must_not_run() -> None:
        raise AssertionError("train_step ran although the cache exists")

    second = mlp()
    peftkit.preprocess_loraga(second, ga_config(), must_not_run, cache_file=cache)
    for name in ("0", "2"):
        torch.testing.assert_close(getattr(second.get_submodule(name), GRAD_ATTR), stored[f"{name}.{GRAD_ATTR}"])
    other = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 8), nn.Linear(8, 8))
    config = peftkit.LoraConfig(
        target_modules=["3"], init_lora_weights="lora_ga", lora_ga_config=peftkit.LoraGAConfig()
    )
    with pytest.raises(CheckpointError, match=r"lacks 3\._peft_loraga_grad"):
        peftkit.preprocess_loraga(other, config, must_not_run, cache_file=cache)


def test_other_layer_types_get_the_default_init() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 12)
            self.conv = nn.Conv1d(12, 12, 1)
            self.linear = nn.Linear(12, 12)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.linear(self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2))

    model = Mixed()
    ids = torch.randint(0, 20, (2, 5))
    config = peftkit.LoraConfig(
        r=2, target_modules=["embed", "conv", "linear"], init_lora_weights="lora_ga", lora_ga_config={"scale": "unit"}
    )
    peftkit.preprocess_loraga(model, config, lambda: model(ids).sum().backward())
    assert hasattr(model.linear, GRAD_ATTR) and not hasattr(model.conv, GRAD_ATTR)
    peft_model = peftkit.get_peft_model(model, config)
    inner = peft_model.base_model.model
    assert torch.count_nonzero(inner.embed.lora_embedding_A["default"]) == 0
    assert torch.count_nonzero(inner.conv.lora_B["default"].weight) == 0
    assert torch.count_nonzero(inner.linear.lora_B["default"].weight) > 0


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    config = ga_config(direction="ArBr", scale="weight_svd", stable_gamma=4)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())["lora_ga_config"]
    assert written == {"direction": "ArBr", "scale": "weight_svd", "stable_gamma": 4}
    loaded = peftkit.LoraConfig.from_pretrained(tmp_path)
    assert loaded.lora_ga_config == peftkit.LoraGAConfig(direction="ArBr", scale="weight_svd", stable_gamma=4)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"direction": "BrAr"}, "direction"), ({"scale": "huge"}, "scale"), ({"stable_gamma": 0}, "stable_gamma")],
)
def test_bad_options_are_refused(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        peftkit.LoraGAConfig(**options)  # type: ignore[arg-type]


def test_refusals_name_what_is_wrong() -> None:
    model = mlp()
    plain = peftkit.LoraConfig(target_modules=["0"])
    with pytest.raises(ConfigError, match="lora_ga_config"):
        peftkit.preprocess_loraga(model, plain, step_for(model, batches()))
    no_linear = peftkit.LoraConfig(target_modules=["1"], init_lora_weights="lora_ga", lora_ga_config={})
    with pytest.raises(ConfigError, match=r"nn\.Linear and Conv1D"):
        peftkit.preprocess_loraga(model, no_linear, step_for(model, batches()))
    missing = peftkit.LoraConfig(target_modules=["0", "2"], init_lora_weights="lora_ga")
    with pytest.raises(ConfigError, match="lora_ga_config"):
        _inject_with_grad(missing)
    too_large = peftkit.LoraConfig(
        r=5, target_modules=["0", "2"], init_lora_weights="lora_ga", lora_ga_config=peftkit.LoraGAConfig()
    )
    with pytest.raises(ConfigError, match="r <= 4"):
        _inject_with_grad(too_large)
    with pytest.raises(ConfigError, match="lora_bias"):  # as in PEFT: B's bias would stay undefined
        peftkit.LoraConfig(init_lora_weights="lora_ga", lora_bias=True)


def _inject_with_grad(config: peftkit.LoraConfig) -> None:
    """Preprocess and inject; the refusal must come before any base weight is rewritten or gradient consumed."""
    model = mlp()
    peftkit.preprocess_loraga(model, ga_config(), step_for(model, batches()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        peftkit.get_peft_model(model, config)
    finally:
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert hasattr(model[0], GRAD_ATTR) and hasattr(model[2], GRAD_ATTR)


def test_quantized_targets_are_refused() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(12, 10, quant_type="nf4")
    layer.load_state_dict(nn.Linear(12, 10).state_dict())
    model = nn.Sequential(layer.to("cpu"), nn.Tanh(), nn.Linear(10, 8))  # the move quantizes the weight
    with pytest.raises(ConfigError, match="quantized"):
        peftkit.preprocess_loraga(model, ga_config(), lambda: None)
