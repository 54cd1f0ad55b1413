"""AdaLoRA's importance-based rank allocation and orthogonality penalty (Zhang et al., 2023, sections 3.2-3.3).

Importance of every entry ``w`` of ``A``, ``E``, ``B`` after a backward pass:

    I = |w * grad(w)|,   Ibar <- beta1 Ibar + (1 - beta1) I,   U <- beta2 U + (1 - beta2) |I - Ibar|,
    score(w) = Ibar * U.

Triplet ``i`` of a layer (row ``i`` of ``A`` and ``E``, column ``i`` of ``B``) scores
``score(E_i) + mean_j score(A_ij) + mean_j score(B_ji)``. Given a budget ``b`` (total ranks kept across
layers), every triplet whose score is among the ``b0 - b`` lowest (``b0`` = initial total) has its
``E_i`` set to zero; the kept triplets form ``rank_pattern``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from peftkit.methods.adalora.config import AdaLoraConfig
from peftkit.methods.adalora.layer import SVDLayer

_TENSORS = ("lora_A", "lora_E", "lora_B")


def svd_layers(model: nn.Module, adapter: str) -> list[tuple[str, SVDLayer]]:
    """``(module name, layer)`` for every AdaLoRA layer of ``model`` that holds ``adapter``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SVDLayer) and adapter in m.lora_E]


def pattern_key(module_name: str) -> str:
    """The ``rank_pattern`` key of a layer, as PEFT saves it: ``"<module name>.lora_E"``."""
    return f"{module_name}.lora_E"


def orthogonality_penalty(model: nn.Module, adapter: str) -> torch.Tensor | None:
    """Mean over ``A`` and ``B`` of every layer of ``||A A^T - I||_F`` and ``||B^T B - I||_F`` (``None`` if
    ``adapter`` has no AdaLoRA layer); it pushes ``A`` and ``B`` towards orthogonal singular vectors."""
    terms = []
    for _, layer in svd_layers(model, adapter):
        A, B = layer.lora_A[adapter], layer.lora_B[adapter]
        for gram in (A @ A.T, B.T @ B):
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            terms.append((gram - eye).norm())
    return torch.stack(terms).mean() if terms else None


class RankAllocator:
    """Tracks the importance of adapter ``adapter``'s triplets and masks them down to the scheduled budget.

    Args:
        model: The model holding the AdaLoRA layers (names in ``rank_pattern`` are relative to it).
        adapter: The adapter being trained.
        config: Its live config; :meth:`step` writes the allocation into ``config.rank_pattern``.
    """

    def __init__(self, model: nn.Module, adapter: str, config: AdaLoraConfig) -> None:
        self.adapter = adapter
        self.config = config
        self.layers = svd_layers(model, adapter)
        self.initial_budget = sum(layer.r[adapter] for _, layer in self.layers)
        self.target_budget = config.target_r * len(self.layers)
        self.reset_importance()

    def reset_importance(self) -> None:
        """Forget the smoothed sensitivities and uncertainties."""
        self.sensitivity: dict[str, torch.Tensor] = {}
        self.uncertainty: dict[str, torch.Tensor] = {}

    def budget_at(self, step: int) -> tuple[int, bool]:
        """``(budget, mask now?)``: the initial budget during warm-up, then a cubic decrease
        ``b_T + (b_0 - b_T) (1 - (step - tinit) / (total_step - tfinal - tinit))^3`` masking every ``deltaT``
        steps, then the target budget."""
        c = self.config
        final = c.total_step - c.tfinal  # type: ignore[operator]  # AdaLoraConfig checks total_step is set when training starts
        if step <= c.tinit:
            return self.initial_budget, False
        if step > final:
            return self.target_budget, True
        progress = 1 - (step - c.tinit) / (final - c.tinit)
        budget = int((self.initial_budget - self.target_budget) * progress**3 + self.target_budget)
        return budget, step % c.deltaT == 0

    def _tensors(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, layer in self.layers:
            for kind in _TENSORS:
                yield f"{name}.{kind}", getattr(layer, kind)[self.adapter]

    def update_importance(self) -> None:
        """Fold the current gradients into the sensitivity / uncertainty averages (tensors without a
        gradient are skipped)."""
        beta1, beta2 = self.config.beta1, self.config.beta2
        with torch.no_grad():
            for key, param in self._tensors():
                if param.grad is None:
                    continue
                importance = (param * param.grad).abs()
                mean = self.sensitivity.get(key, torch.zeros_like(param))
                spread = self.uncertainty.get(key, torch.zeros_like(param))
                mean = beta1 * mean + (1 - beta1) * importance
                self.sensitivity[key] = mean
                self.uncertainty[key] = beta2 * spread + (1 - beta2) * (importance - mean).abs()

    def _score(self, key: str, like: torch.Tensor) -> torch.Tensor:
        if key not in self.sensitivity:
            return torch.zeros_like(like)
        return self.sensitivity[key] * self.uncertainty[key]

    def triplet_scores(self, name: str, layer: SVDLayer) -> torch.Tensor:
        """Importance of each of the layer's triplets, shape ``(r,)``."""
        a = self._score(f"{name}.lora_A", layer.lora_A[self.adapter]).mean(dim=1)
        e = self._score(f"{name}.lora_E", layer.lora_E[self.adapter]).view(-1)
        b = self._score(f"{name}.lora_B", layer.lora_B[self.adapter]).mean(dim=0)
        return e + a + b

    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero ``E`` of the ``initial_budget - budget`` least important triplets (ties at the threshold are
        pruned too); returns the kept triplets per layer (the ``rank_pattern``)."""
        scores = {name: self.triplet_scores(name, layer) for name, layer in self.layers}
        pruned = self.initial_budget - budget
        threshold = float("-inf")
        if pruned > 0 and scores:
            threshold = torch.kthvalue(torch.cat(list(scores.values())), pruned).values.item()
        pattern: dict[str, list[bool]] = {}
        with torch.no_grad():
            for name, layer in self.layers:
                keep = scores[name] > threshold
                layer.lora_E[self.adapter].masked_fill_(~keep.view(-1, 1), 0.0)
                pattern[pattern_key(name)] = keep.tolist()
        return pattern

    def mask_with_pattern(self, pattern: dict[str, list[bool]]) -> None:
        """Re-apply a frozen allocation (the optimizer may have moved pruned singular values off zero)."""
        with torch.no_grad():
            for name, layer in self.layers:
                E = layer.lora_E[self.adapter]
                mask = pattern.get(pattern_key(name))
                if mask is None or len(mask) != E.shape[0]:
                    continue
                keep = torch.tensor(mask, dtype=torch.bool, device=E.device).view(-1, 1)
                E.masked_fill_(~keep, 0.0)

    def step(self, global_step: int) -> None:
        """One call per optimizer step (after ``backward``, before ``zero_grad``).

        Before ``total_step - tfinal``: update importances and mask to the scheduled budget when due. At
        ``total_step - tfinal``: mask to the target budget, freeze ``rank_pattern``. After it: re-apply it.
        """
        c = self.config
        final = c.total_step - c.tfinal  # type: ignore[operator]  # AdaLoraConfig checks total_step is set when training starts
        if global_step < final:
            self.update_importance()
            budget, due = self.budget_at(global_step)
            if due:
                c.rank_pattern = self.mask_to_budget(budget)
        elif global_step == final:
            c.rank_pattern = self.mask_to_budget(self.target_budget)
            self.reset_importance()
        elif c.rank_pattern:
            self.mask_with_pattern(c.rank_pattern)
