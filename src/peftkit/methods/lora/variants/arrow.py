"""Arrow routing as a LoRA variant (Ostapenko et al., 2024, arXiv:2405.11157; GenKnowSub: Bhardwaj et al., ACL 2025).

The router adapter (``arrow_router``, made by :func:`~peftkit.methods.lora.arrow.create_arrow_model`) holds no
weights of its own that matter: on each adapted ``Linear`` / ``Conv1D`` it mixes the layer's task experts (the other
LoRA adapters there, general ``gks_<i>`` adapters and routers excepted). For expert ``e`` with factors
``A_e (r, in)``, ``B_e (out, r)`` and scaling ``s_e``:

* prototype ``p_e (in)``: the top right singular vector of ``B_e A_e``, by 15 power iterations on
  ``v -> A_e^T (B_e^T B_e) A_e v`` in float32 from a normal start vector (``ArrowConfig.rng_seed``'s generator, else
  the global one), computed once and again only when experts come or go;
* per token ``x (in)``: ``sim_e = |p_e . x|``; the ``top_k`` largest keep their score, the others ``-inf``;
  ``c = softmax(sim / router_temperature)``;
* output ``y = base(x) + dropout(sum_e c_e s_e B_e A_e x)``.

GenKnowSub (``use_gks``), before the first routing: every task expert's ``A`` and ``B`` lose the mean ``A`` and mean
``B`` of the general adapters, in place (so the experts stay purified when used on their own, as in the reference);
experts that arrive later are purified at the next routing.

Routing is per token, so the router cannot be merged (:class:`~peftkit.errors.MergeError`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.errors import ConfigError, UnsupportedError
from peftkit.methods.lora.arrow_config import ArrowConfig
from peftkit.methods.lora.variant import LoraVariant

#: Adapter-name prefix of GenKnowSub's general adapters (PEFT's); ``gks_<digits>`` are never task experts.
GKS_PREFIX = "gks_"
#: Power-iteration steps for each prototype.
POWER_ITERATIONS = 15


def _is_general(name: str) -> bool:
    return name.startswith(GKS_PREFIX) and name[len(GKS_PREFIX) :].isdigit()


def top_right_singular_vector(A: torch.Tensor, B: torch.Tensor, seed: int | None, eps: float = 1e-8) -> torch.Tensor:
    """The dominant right singular vector ``(in,)`` of ``B @ A`` (up to sign), float32, without forming ``B @ A``:
    power iteration on ``A^T (B^T B) A`` from ``randn(in)`` (a generator seeded with ``seed``, else the global one)."""
    A32, B32 = A.detach().float(), B.detach().float()
    gram = B32.T @ B32
    generator = None
    if seed is not None:
        generator = torch.Generator(device=A32.device.type)
        generator.manual_seed(int(seed))
    v = torch.randn(A32.shape[1], dtype=A32.dtype, device=A32.device, generator=generator)
    v = v / (v.norm() + eps)
    for _ in range(POWER_ITERATIONS):
        w = A32.T @ (gram @ (A32 @ v))
        v = w / (w.norm() + eps)
    return v


class ArrowRouter(nn.Module):
    """Per-layer state of one Arrow router adapter (PEFT's ``lora_arrow[adapter]``): the experts it routes among,
    their prototypes (a non-persistent buffer), and which experts GenKnowSub has purified."""

    def __init__(self, config: ArrowConfig) -> None:
        super().__init__()
        self.top_k = config.top_k
        self.temperature = float(config.router_temperature)
        self.rng_seed = config.rng_seed
        self.use_gks = config.use_gks
        self.task_adapter_names: list[str] = []  # the experts the prototypes describe (PEFT's name), layer order
        self.purified: set[str] = set()
        self.general: list[str] = list(config.gks_adapter_names or [])
        self.prototypes: torch.Tensor | None
        self.register_buffer("prototypes", None, persistent=False)

    def current_experts(self, layer: Any) -> list[str]:
        """The layer's task experts: its adapters with ``A`` and ``B`` that are neither routers nor general."""
        routers = getattr(layer, "lora_arrow", {})
        return [n for n in layer.lora_A if n in layer.lora_B and n not in routers and not _is_general(n)]

    @torch.no_grad()
    def refresh(self, layer: Any) -> None:
        """Purify new experts (GenKnowSub) and rebuild the prototypes when the experts changed."""
        experts = self.current_experts(layer)
        if not experts:
            raise UnsupportedError("The Arrow router found no task expert (LoRA adapter) on this layer to route to.")
        if self.use_gks:
            self._subtract_general_knowledge(layer, [n for n in experts if n not in self.purified])
        if experts != self.task_adapter_names or self.prototypes is None:
            protos = []
            for name in experts:
                A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
                protos.append(self.top_right_singular_vec_from_BA(A, B).to(dtype=A.dtype, device=A.device))
            self.prototypes = torch.stack(protos)
            self.task_adapter_names = experts

    def top_right_singular_vec_from_BA(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """PEFT's name for :func:`top_right_singular_vector` with this router's seed (one call per prototype)."""
        return top_right_singular_vector(A, B, self.rng_seed)

    def _subtract_general_knowledge(self, layer: Any, names: list[str]) -> None:
        if not names:
            return
        missing = [n for n in self.general if n not in layer.lora_A]
        if not self.general or missing:
            raise ConfigError(
                "ArrowConfig.use_gks=True subtracts the general adapters, but this layer holds "
                f"{'none' if not self.general else 'not ' + ', '.join(missing)}; pass general_adapter_paths to "
                "create_arrow_model."
            )
        mean_A = torch.stack([layer.lora_A[n].weight for n in self.general]).mean(0)
        mean_B = torch.stack([layer.lora_B[n].weight for n in self.general]).mean(0)
        for name in names:
            layer.lora_A[name].weight.sub_(mean_A)
            layer.lora_B[name].weight.sub_(mean_B)
        self.purified.update(names)

    def route(self, layer: Any, x: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        """``dropout(sum_e c_e s_e B_e A_e x)`` for ``x (..., in)`` (see the module docstring), in the experts'
        dtype, shaped ``(..., out)``."""
        prototypes = self.prototypes
        assert prototypes is not None  # refresh() ran
        experts = self.task_adapter_names
        if self.top_k > len(experts):
            raise ConfigError(
                f"ArrowConfig.top_k={self.top_k} but this layer has {len(experts)} task experts; use top_k <= "
                f"{len(experts)}."
            )
        A = torch.stack([layer.lora_A[n].weight for n in experts])  # (E, r, in)
        B = torch.stack([layer.lora_B[n].weight for n in experts])  # (E, out, r)
        tokens = x.to(A.dtype).reshape(-1, x.shape[-1])  # (t, in)
        scales = torch.tensor([layer.scaling[n] for n in experts], device=tokens.device, dtype=tokens.dtype)
        similarity = (tokens @ prototypes.T).abs()  # (t, E)
        top, index = torch.topk(similarity, self.top_k, dim=1)
        scores = torch.full_like(similarity, float("-inf")).scatter_(1, index, top)
        weights = torch.softmax(scores / self.temperature, dim=1) * scales  # (t, E): c_e s_e
        low = torch.einsum("ti,eri->ter", tokens, A) * weights[:, :, None]  # (t, E, r)
        delta = torch.einsum("ter,eor->to", low, B)
        return dropout(delta).reshape(*x.shape[:-1], delta.shape[-1])


class ArrowVariant(LoraVariant):
    """The router adapter of a layer (see the module docstring); its state lives in ``layer.lora_arrow``."""

    name = "arrow"
    mergeable = False

    def __init__(self, config: ArrowConfig) -> None:
        self.config = config

    def init(self, layer: Any, adapter: str, spec: Any) -> None:
        """Register ``layer.lora_arrow`` (PEFT's container; listed in the layer's ``adapter_layer_names`` so that
        deleting the adapter drops its router) and this adapter's :class:`ArrowRouter` in it."""
        if "lora_arrow" not in layer._modules:
            layer.add_module("lora_arrow", nn.ModuleDict())
            layer.adapter_layer_names = (*layer.adapter_layer_names, "lora_arrow")
        layer.lora_arrow[adapter] = ArrowRouter(self.config)

    def adapt_output(self, layer: Any, result: torch.Tensor, x: torch.Tensor, adapter: str) -> torch.Tensor:
        """``result + dropout(sum_e c_e s_e B_e A_e x)`` (GenKnowSub and prototypes brought up to date first)."""
        router: ArrowRouter = layer.lora_arrow[adapter]
        router.refresh(layer)
        return result + router.route(layer, x, layer.lora_dropout[adapter]).to(result.dtype)


def build(config: Any, module_name: str, module: nn.Module) -> LoraVariant:
    """The Arrow router of layer ``module_name``.

    Raises:
        UnsupportedError: the layer is not an ``nn.Linear`` / ``Conv1D`` (Arrow routes Linear layers only).
    """
    if not isinstance(module, (nn.Linear, Conv1D)):
        raise UnsupportedError(
            f"Arrow routes LoRA experts on Linear and Conv1D layers only; {module_name!r} is a "
            f"{type(module).__name__}. Leave it out of the experts' target_modules."
        )
    return ArrowVariant(config.arrow_config)
