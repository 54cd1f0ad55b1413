"""CorDA (``preprocess_corda`` then ``init_lora_weights="corda"``) against its formula on fresh random data: the
covariance is the mean of ``X^T X / max(X)^2`` over calls; ``s B A`` is the kept part of the SVD of ``W C'`` mapped
back by ``C'^{-1}`` (the largest components for IPM, the smallest for KPM) and the base keeps the rest, so the
adapted layer starts equal to the original; hooks are removed (also when the run fails); the decomposition is
consumed; refusals name what to do; the sub-config round-trips through JSON and PEFT's warnings apply."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from peftkit.tuners.lora.corda import preprocess_corda
from torch import nn

import peftkit
from peftkit import CordaConfig, LoraConfig
from peftkit.errors import ConfigError, UsageError


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(x)))


def _setup(method: str = "ipm", r: int = 3, **corda: object) -> tuple[TwoLayers, LoraConfig, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoLayers().eval()
    data = [torch.randn(30, 12) for _ in range(3)]
    config = LoraConfig(
        r=r, lora_alpha=5, target_modules=["up", "down"], init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=method, **corda),
    )  # fmt: skip
    return model, config, data


def test_covariance_is_the_mean_of_normalised_gram_matrices() -> None:
    model, config, data = _setup(prune_temporary_fields=False)
    preprocess_corda(model, config, run_model=lambda: [model(x) for x in data])
    expected = sum((x / x.max().abs()).T @ (x / x.max().abs()) for x in data) / len(data)
    assert model.up.sample_count == 3
    torch.testing.assert_close(model.up.covariance_matrix, expected)
    assert model.up._forward_hooks == {} and model.down._forward_hooks == {}


@pytest.mark.parametrize("method", ["ipm", "kpm"])
def test_factors_are_the_kept_components_and_the_base_keeps_the_rest(method: str) -> None:
    model, config, data = _setup(method, prune_temporary_fields=False)
    original = copy.deepcopy(model)
    preprocess_corda(model, config, run_model=lambda: [model(x) for x in data])
    cov = model.up.covariance_matrix
    damped = cov + 0.01 * torch.diag(cov).mean() * torch.eye(12)  # this data needs no more damping
    U, S, Vh = torch.linalg.svd(original.up.weight.detach() @ damped, full_matrices=False)
    V = (Vh @ torch.linalg.inv(damped)).T
    keep = slice(0, 3) if method == "ipm" else slice(-3, None)
    adapted = peftkit.get_peft_model(model, config)
    layer = adapted.base_model.model.up
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    torch.testing.assert_close(s * B @ A, U[:, keep] @ torch.diag(S[keep]) @ V[:, keep].T, atol=1e-5, rtol=1e-4)
    root = torch.sqrt(S[keep] / s)  # A = sqrt(S / s) V^T and B = U sqrt(S / s), up to each component's sign
    gram_A = root[:, None] * (V[:, keep].T @ V[:, keep]) * root[None, :]
    torch.testing.assert_close(A @ A.T, gram_A, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(B.T @ B, torch.diag(S[keep] / s), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layer.base_layer.weight + s * B @ A, original.up.weight, atol=1e-5, rtol=0)
    x = torch.randn(4, 12)
    torch.testing.assert_close(adapted(x), original(x), atol=1e-5, rtol=0)
    assert not hasattr(layer.base_layer, "eigens")  # consumed by the initialisation
    kept_energy = S[keep].sum() / S.sum()
    assert (kept_energy > 3 / 12) if method == "ipm" else (kept_energy < 3 / 12)


def test_temporary_fields_are_pruned_by_default() -> None:
    model, config, data = _setup()
    preprocess_corda(model, config, run_model=lambda: model(data[0]))
    for attr in ("sample_count", "covariance_matrix", "corda_method", "rank"):
        assert not hasattr(model.up, attr), attr
    assert model.up.eigens.U_WC.shape == (20, 3) and model.up.eigens.V_WC.shape == (12, 3)


def test_hooks_are_removed_when_the_calibration_run_fails() -> None:
    model, config, _ = _setup()

    def failing() -> None:
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        preprocess_corda(model, config, run_model=failing)
    assert model.up._forward_hooks == {} and model.down._forward_hooks == {}


def test_cache_file_restores_the_same_factors_without_data(tmp_path: Path) -> None:
    model, config, data = _setup("kpm", cache_file=str(tmp_path / "sub" / "cache.pt"))
    fresh = copy.deepcopy(model)
    preprocess_corda(model, config, run_model=lambda: model(data[0]))
    first = peftkit.get_peft_model(model, config).state_dict()
    preprocess_corda(fresh, config)  # no run_model: read from the cache
    second = peftkit.get_peft_model(fresh, config).state_dict()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=0, atol=0)


def test_refusals_name_what_to_do() -> None:
    model, config, data = _setup()
    with pytest.raises(ConfigError, match="run_model"):
        preprocess_corda(model, config)
    with pytest.raises(UsageError, match="preprocess_corda"):
        peftkit.get_peft_model(copy.deepcopy(model), config)  # no decomposition on the layers
    preprocess_corda(model, config, run_model=lambda: model(data[0]))
    other_rank = LoraConfig(r=5, target_modules=["up", "down"], init_lora_weights="corda", corda_config=CordaConfig())
    with pytest.raises(ConfigError, match="same model and LoraConfig"):
        peftkit.get_peft_model(model, other_rank)
    unused = TwoLayers()
    with pytest.raises(UsageError, match="never ran"):
        preprocess_corda(unused, config, run_model=lambda: unused.up(data[0]))  # 'down' sees no input
    with pytest.raises(ConfigError, match="target_modules"):
        preprocess_corda(TwoLayers(), LoraConfig(init_lora_weights="corda", corda_config=CordaConfig()))


def test_sub_config_round_trips_and_warnings() -> None:
    _, config, _ = _setup("kpm")
    again = LoraConfig.from_dict(config.to_dict())
    assert isinstance(again.corda_config, CordaConfig) and again.corda_config.corda_method == "kpm"
    with pytest.warns(UserWarning, match="without a corda_config"):
        defaulted = LoraConfig(init_lora_weights="corda")
    assert defaulted.corda_config == CordaConfig()
    with pytest.warns(UserWarning, match="corda_config is only read"):
        LoraConfig(corda_config=CordaConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoraConfig(init_lora_weights="corda", corda_config={"corda_method": "kpm"})
    with pytest.warns(UserWarning, match="unknown keys"):  # a newer version's keys are dropped
        dropped = LoraConfig(init_lora_weights="corda", corda_config={"method": "kpm"})
    assert dropped.corda_config == CordaConfig()
