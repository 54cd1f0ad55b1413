"""MonteCLoRA (``monteclora_config``, :mod:`peftkit.methods.lora.variants.monteclora`) against its formulas: one
draw's noise and mixture weights, the training forward with that draw, plain LoRA in eval and when merged, the
variational loss terms; the config's values and the layers it refuses."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import peftkit
from peftkit.errors import ConfigError
from peftkit.methods.lora.variants.monteclora import MontecloraSampler


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 10)
        self.lin0 = nn.Linear(10, 12)
        self.lin1 = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(x)))


def monteclora_model(**monteclora: object) -> peftkit.PeftModel:
    torch.manual_seed(0)
    config = peftkit.LoraConfig(
        target_modules=["lin0", "lin1"],
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        monteclora_config=peftkit.MontecloraConfig(**{"num_samples": 3, **monteclora}),  # type: ignore[arg-type]
    )
    return peftkit.get_peft_model(MLP(), config)


def expected_draw(sampler: MontecloraSampler, in_features: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The module docstring's formulas, drawing in the same order."""
    torch.manual_seed(seed)
    n, r, cfg = sampler.config.num_samples, sampler.rank, sampler.config
    chi2 = (torch.randn(r, r) ** 2).sum(0)
    var = torch.clamp(torch.exp(2 * sampler.std_prior) * chi2, min=1e-3)
    noise = cfg.sample_scaler * torch.randn(n, in_features, r) * var.sqrt()
    alpha = torch.exp(sampler.expert_weights_prior)
    mu = torch.log(alpha) - torch.log(alpha).mean()
    spread = (1 - 2 / n) / alpha + (1 / alpha).sum() / n**2 + 1e-6
    return noise, torch.softmax(spread.sqrt() * torch.randn(n) + mu, -1), var


def test_training_forward_mixes_the_drawn_perturbations_of_A() -> None:
    model = monteclora_model(sample_scaler=0.05).train()
    layer = model.base_model.model.lin1
    sampler = layer.lora_monteclora_sampler["default"]
    h = torch.randn(2, 12)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    noise, weights, var = expected_draw(sampler, 12, seed=3)
    mixed = (weights[:, None, None] * (A.T + noise)).sum(0).T
    expected = layer.base_layer(h) + 2.0 * h @ mixed.T @ B.T
    torch.manual_seed(3)
    torch.testing.assert_close(layer(h), expected)
    torch.testing.assert_close(sampler.expert_weights, weights)
    torch.testing.assert_close(sampler.gaussian_var_prior, torch.diag(var))
    assert not torch.allclose(layer(h), layer(h))  # a new draw per forward


def test_eval_and_merge_are_plain_lora() -> None:
    model = monteclora_model(sample_scaler=0.5).eval()
    x = torch.randn(4, 10)
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1

    def plain(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        return layer.base_layer(h) + 2.0 * h @ A.T @ B.T

    with torch.no_grad():
        expected = plain(lin1, torch.relu(plain(lin0, x)))
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model.merge_and_unload()(x), expected, atol=1e-5, rtol=1e-5)


def test_variational_loss_terms() -> None:
    model = monteclora_model(use_entropy=True, dirichlet_prior=0.3, kl_loss_weight=0.5).train()
    model(torch.randn(2, 10))
    terms = []
    for layer in (model.base_model.model.lin0, model.base_model.model.lin1):
        sampler = layer.lora_monteclora_sampler["default"]
        alpha, prior = torch.exp(sampler.expert_weights_prior), torch.full((3,), 0.3)
        lg = torch.lgamma
        kl1 = lg(alpha.sum()) - lg(prior.sum()) + (lg(alpha) - lg(prior)).sum()
        kl1 = kl1 + ((alpha - prior) * (torch.digamma(alpha) - torch.digamma(alpha.sum()))).sum()
        var = torch.exp(2 * sampler.std_prior)
        kl2 = 0.5 * (-torch.log(var).sum() * 4 + var.sum() * 4 - 16)
        drawn = sampler.gaussian_var_prior.diagonal()
        kl3 = 3 * 0.5 * (drawn.sum() - torch.log(drawn).sum() - 4)
        terms.append(0.5 * (kl1 + kl2 + kl3) + (sampler.expert_weights**2).sum())
    loss = model._get_monteclora_loss()
    torch.testing.assert_close(loss, sum(terms) / 2)
    loss.backward()
    sampler = model.base_model.model.lin0.lora_monteclora_sampler["default"]
    assert sampler.std_prior.grad is not None and sampler.expert_weights_prior.grad is not None
    assert model._get_monteclora_loss("other") == 0.0
    model.eval()
    assert model._get_monteclora_loss() == 0.0


def test_copies_after_a_training_step() -> None:
    model = monteclora_model().train()
    model(torch.randn(2, 10)).sum().backward()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone.eval()(torch.ones(1, 10)), model.eval()(torch.ones(1, 10)))
        model.train()


def test_config_values_and_refusals() -> None:
    config = peftkit.LoraConfig(monteclora_config={"num_samples": 2})
    assert config.monteclora_config == peftkit.MontecloraConfig(num_samples=2)
    assert config.to_dict()["monteclora_config"]["buffer_size"] == 150
    for bad in ({"num_samples": 0}, {"dirichlet_prior": 0.0}, {"buffer_size": -1}):
        with pytest.raises(ConfigError):
            peftkit.MontecloraConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        peftkit.LoraConfig(monteclora_config=3)
    for fields in ({"target_modules": ["emb"]}, {"target_modules": ["lin0"], "use_dora": True}):
        with pytest.raises(ConfigError):
            peftkit.get_peft_model(MLP(), peftkit.LoraConfig(monteclora_config={}, **fields))  # type: ignore[arg-type]
