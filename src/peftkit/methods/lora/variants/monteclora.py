"""MonteCLoRA, Monte Carlo low-rank adaptation (Sengupta et al., 2024, arXiv:2411.04358); PEFT's
``LoraConfig(monteclora_config=MontecloraConfig())``, on ``nn.Linear`` and GPT-2 ``Conv1D``.

In training, each forward draws ``N`` (``num_samples``) perturbations of ``A^T (in, r)`` and mixes them:

* per-rank variances ``v = max(e^{2 sigma} * c, 1e-3)`` with ``sigma`` the trainable ``std_prior (r,)`` and
  ``c_j ~ chi^2(r)`` (the diagonal of a ``Wishart(r, I_r)`` draw); noise ``E_n = sample_scaler * Z_n diag(sqrt(v))``,
  ``Z_n ~ N(0, 1)^{in x r}``;
* mixture weights ``w = softmax(mu + s * z)``, ``z ~ N(0, I_N)``, the logistic-normal approximation of a
  ``Dirichlet(alpha)`` with ``alpha = e^{expert_weights_prior}`` (trainable, ``(N,)``): ``mu = log alpha -
  mean(log alpha)``, ``s^2 = (1 - 2/N) / alpha + sum(1 / alpha) / N^2``;
* ``y = base(x) + scaling * B (sum_n w_n (A^T + E_n))^T dropout(x)``.

In eval the adapter is plain LoRA (deterministic; merging adds ``s B A``). The variational loss
(:meth:`MontecloraSampler.variational_loss`, averaged over layers by PEFT's ``LoraModel._get_monteclora_loss``) is
``kl_loss_weight * (KL_dirichlet + KL_wishart + KL_gaussian)`` plus ``sum(w^2)`` with ``use_entropy``, in training.
The sampler's parameters and its last draw (buffers ``gaussian_var_prior (r, r)``, ``expert_weights (N,)``) are
saved under ``lora_monteclora_sampler`` as in PEFT.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ConfigError, PeftWarning
from peftkit.methods.lora.variant import LoraVariant
from peftkit.methods.lora.variants.monteclora_config import MontecloraConfig

if TYPE_CHECKING:
    from peftkit.methods.lora.layer import Linear, LoraLayer

#: The per-adapter container of samplers on a layer (PEFT's attribute and state-dict name).
SAMPLERS = "lora_monteclora_sampler"


def build(config: Any, module_name: str, module: nn.Module) -> LoraVariant:
    """MonteCLoRA for the layer ``module_name`` (base layer ``module``).

    Raises:
        ConfigError: ``module`` is not an ``nn.Linear`` / ``Conv1D``, or ``use_dora`` is set too (as in PEFT).
    """
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise ConfigError(
            f"MonteCLoRA (monteclora_config) adapts nn.Linear and Conv1D layers only; {module_name!r} is a "
            f"{type(module).__name__}. Leave it out of target_modules or set monteclora_config=None."
        )
    if config.use_dora:
        raise ConfigError("monteclora_config and use_dora=True are two LoRA variants that do not combine; choose one.")
    return MontecloraLinearVariant(config.monteclora_config)


class _LiveDraw(dict[str, torch.Tensor]):  # name -> tensor still attached to the last forward's graph
    """The last training draw with its autograd graph (the variational loss differentiates through it); copies and
    pickles of the layer start empty, since graph tensors cannot be copied."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _LiveDraw:
        return _LiveDraw()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (_LiveDraw, ())


class MontecloraSampler(nn.Module):
    """The variational parameters of one adapter on one layer (PEFT's class name and state-dict names).

    Attributes:
        std_prior: Trainable ``(r,)``, log standard deviations of the rank directions (``U[0, 1)`` at init).
        expert_weights_prior: Trainable ``(N,)``, log Dirichlet concentrations (``U[0, 1)`` at init).
        gaussian_var_prior: Buffer ``(r, r)``, the last drawn diagonal covariance (identity at init).
        expert_weights: Buffer ``(N,)``, the last drawn mixture weights (uniform at init).
    """

    gaussian_var_prior: torch.Tensor
    expert_weights: torch.Tensor

    def __init__(self, rank: int, config: MontecloraConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.rank, self.config = rank, config
        n = config.num_samples
        self.std_prior = nn.Parameter(torch.rand(rank, device=device, dtype=dtype))
        self.expert_weights_prior = nn.Parameter(torch.rand(n, device=device, dtype=dtype))
        self.register_buffer("gaussian_var_prior", torch.eye(rank, device=device, dtype=dtype))
        self.register_buffer("expert_weights", torch.full((n,), 1.0 / n, device=device, dtype=dtype))
        self.live = _LiveDraw()

    def draw(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward's samples: noise ``(N, in, r)`` and mixture weights ``(N,)`` (see the module docstring)."""
        device, dtype, n, r = self.std_prior.device, self.std_prior.dtype, self.config.num_samples, self.rank
        chi2 = torch.randn(r, r, device=device).pow(2).sum(0).to(dtype)  # diag of Wishart(r, I): columns' norms
        variances = torch.clamp(torch.exp(2 * self.std_prior) * chi2, min=1e-3)
        z = torch.randn(n, in_features, r, device=device, dtype=dtype)
        noise = self.config.sample_scaler * torch.nan_to_num(z * variances.float().sqrt().to(dtype), nan=1e-3)
        alpha = torch.clamp(torch.exp(self.expert_weights_prior), min=1e-6)
        mu = torch.log(alpha) - torch.log(alpha).mean()
        spread = torch.clamp((1 - 2 / n) / alpha + (1 / alpha).sum() / n**2, min=1e-6) + 1e-6
        weights = torch.softmax(spread.float().sqrt().to(dtype) * torch.randn(n, device=device, dtype=dtype) + mu, -1)
        covariance = torch.diag(variances)
        with torch.no_grad():
            self.gaussian_var_prior.copy_(covariance)
            self.expert_weights.copy_(weights)
        self.live.update(covariance=covariance, weights=weights)
        return noise, weights

    def variational_loss(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(kl_loss_weight * (KL_dirichlet + KL_wishart + KL_gaussian), sum(w^2) or 0)`` in training (PEFT's
        terms, with the last draw's covariance and weights), ``(0.0, 0.0)`` in eval."""
        if not self.training:
            return 0.0, 0.0
        n, r = self.config.num_samples, self.rank
        covariance = self.live.get("covariance", self.gaussian_var_prior)
        weights = self.live.get("weights", self.expert_weights)
        alpha = torch.exp(self.expert_weights_prior)
        prior = torch.full_like(alpha, self.config.dirichlet_prior)
        kl_dirichlet = (
            torch.lgamma(alpha.sum()) - torch.lgamma(prior.sum()) + (torch.lgamma(alpha) - torch.lgamma(prior)).sum()
        ) + ((alpha - prior) * (torch.digamma(alpha) - torch.digamma(alpha.sum()))).sum()
        var = torch.exp(2 * self.std_prior)
        kl_wishart = 0.5 * (r * (var - 2 * self.std_prior).sum() - r**2)
        drawn = torch.clamp(covariance.diagonal(), min=1e-6)
        kl_gaussian = n * 0.5 * (drawn.sum() - torch.log(drawn).sum() - r)
        entropy = (weights**2).sum() if self.config.use_entropy else 0.0
        return self.config.kl_loss_weight * (kl_dirichlet + kl_wishart + kl_gaussian), entropy


class MontecloraLinearVariant(LoraVariant):
    """MonteCLoRA on a LoRA ``Linear`` (PEFT's class name); see the module docstring for the math."""

    name = "monteclora"

    def __init__(self, config: MontecloraConfig) -> None:
        self.config = config

    def init(self, layer: LoraLayer, adapter: str, spec: Any) -> None:
        """Add ``lora_monteclora_sampler[adapter]`` next to ``A`` (same device and dtype; ``meta`` for a load)."""
        if SAMPLERS not in layer._modules:
            layer.add_module(SAMPLERS, nn.ModuleDict())
            layer.__dict__["adapter_layer_names"] = (*layer.adapter_layer_names, SAMPLERS)  # saved, loaded, trained
        A = layer.factor_tensors(adapter)[0]
        getattr(layer, SAMPLERS)[adapter] = MontecloraSampler(spec.r, self.config, A.device, A.dtype)

    def adapt_output(self, layer: Linear, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """Plain LoRA in eval; in training ``result + s * B(A_mixed dropout(x))`` with ``A_mixed`` the mixture of
        the sampled perturbations of ``A`` (a warning and the unperturbed ``A`` if the draw holds NaN)."""
        if not layer.training:
            return layer.plain_adapt_output(result, x, adapter)
        A: Any = layer.lora_A[adapter]
        B: Any = layer.lora_B[adapter]
        x = layer.lora_dropout[adapter](x.to(A.weight.dtype))
        noise, weights = getattr(layer, SAMPLERS)[adapter].draw(layer.in_features)
        weight = A.weight
        if torch.isnan(noise).any() or torch.isnan(weights).any():
            warnings.warn(
                f"MonteCLoRA drew NaN for adapter {adapter!r}; this step uses lora_A as is.", PeftWarning, stacklevel=2
            )
        else:
            weight = torch.einsum("n,nir->ir", weights, A.weight.T + noise).T
        return result + (B(F.linear(x, weight)) * layer.scaling[adapter]).to(result.dtype)


def monteclora_loss(layers: Iterable[Any], adapters: Iterable[str]) -> torch.Tensor | float:
    """Mean over the samplers of ``adapters`` in ``layers`` of ``KL + entropy``
    (:meth:`MontecloraSampler.variational_loss`); ``0.0`` when there is none."""
    wanted = list(adapters)
    total: torch.Tensor | float = 0.0
    count = 0
    for layer in layers:
        samplers: Any = layer._modules.get(SAMPLERS)
        for adapter in wanted:
            if samplers is not None and adapter in samplers:
                kl, entropy = samplers[adapter].variational_loss()
                total, count = total + kl + entropy, count + 1
    return total / count if count else 0.0


__all__ = ["MontecloraLinearVariant", "MontecloraSampler", "build", "monteclora_loss"]
