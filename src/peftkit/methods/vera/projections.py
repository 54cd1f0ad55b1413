"""VeRA's shared projections: ``vera_A (r, max_in)`` and ``vera_B (max_out, r)``, drawn once per adapter.

They are the model-level tensors of the method contract (:class:`peftkit.methods.spec.ModelTensors`): made
when an adapter is injected, held once by the model, saved as ``base_model.vera_A`` / ``base_model.vera_B``
when ``save_projection`` is set, and otherwise re-drawn on load from ``projection_prng_key``, bit for bit as
PEFT draws them: one CPU ``torch.Generator`` seeded with the key draws ``A`` and then ``B`` from the
Kaiming-uniform distribution ``U(-b, b)``, ``b = sqrt(6 / fan_in)`` (``fan_in`` = columns: ``max_in`` for
``A``, ``r`` for ``B``), in float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError, TargetingError
from peftkit.layers.placement import adapter_device
from peftkit.methods.vera.config import VeraConfig
from peftkit.quant.base import weight_shape

#: Names of the projections (in memory and, after ``base_model.``, on disk).
PROJECTION_NAMES = ("vera_A", "vera_B")


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``U(-b, b)`` with ``b = sqrt(3) * sqrt(2) / sqrt(shape[1])`` (He et al., 2015, fan-in mode, ReLU gain)."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape, device="cpu", dtype=torch.float32).uniform_(-bound, bound, generator=generator)


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` of a Linear-like base (``Conv1D`` stores its weight ``(in, out)``)."""
    rows, cols = weight_shape(module)
    return (int(rows), int(cols)) if isinstance(module, Conv1D) else (int(cols), int(rows))


def draw_projections(r: int, max_in: int, max_out: int, seed: int) -> dict[str, torch.Tensor]:
    """``{"vera_A": (r, max_in), "vera_B": (max_out, r)}`` drawn from one generator seeded with ``seed``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vera_A = kaiming_uniform((r, max_in), generator)
    vera_B = kaiming_uniform((max_out, r), generator)
    return {"vera_A": vera_A, "vera_B": vera_B}


def _check_fit(owner: str, tensors: Mapping[str, torch.Tensor], r: int, max_in: int, max_out: int) -> None:
    """Raise :class:`ConfigError` unless adapter ``owner``'s projections serve rank ``r`` over ``(max_in,
    max_out)`` (PEFT would fail later, inside a forward)."""
    rows, cols = tensors["vera_A"].shape
    if rows != r:
        raise ConfigError(
            f"VeRA adapters of one model share adapter {owner!r}'s projections of rank {rows}; this adapter asks "
            f"for r={r}. Use r={rows}, or add the adapter of the larger targets and rank first."
        )
    if cols < max_in or tensors["vera_B"].shape[0] < max_out:
        raise ConfigError(
            f"VeRA adapters of one model share adapter {owner!r}'s projections, sized for layers up to "
            f"in={cols}, out={tensors['vera_B'].shape[0]}; this adapter targets layers up to in={max_in}, "
            f"out={max_out}. Add the adapter with the largest targets first."
        )


class VeraProjections:
    """The :class:`~peftkit.methods.spec.ModelTensors` of VeRA."""

    names: tuple[str, ...] = PROJECTION_NAMES

    def create(
        self, config: PeftConfig, targets: Mapping[str, nn.Module], held: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Projections large enough for every target (the largest ``in`` and ``out`` among them), on the
        first target's device (drawn on the CPU, so that every device gets the same values).

        As in PEFT, only a model's first VeRA adapter draws its projections; a further adapter shares those
        already held (the first adapter's: the same tensors, not a copy), which must fit its targets and its rank.

        Raises:
            TargetingError: ``targets`` is empty.
            ConfigError: the held projections are too small for the targets or of another rank.
        """
        assert isinstance(config, VeraConfig), "VeRA's projections are made for VeraConfig adapters only"
        if not targets:
            raise TargetingError("VeRA found no layer to adapt; check VeraConfig.target_modules.")
        sizes = [in_out_features(module) for module in targets.values()]
        max_in, max_out = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if held:
            first, tensors = next(iter(held.items()))
            _check_fit(first, tensors, config.r, max_in, max_out)
            return dict(tensors)
        tensors = draw_projections(config.r, max_in, max_out, config.projection_prng_key)
        device = adapter_device(next(iter(targets.values())), allow_meta=False)
        return {name: tensor.to(device) for name, tensor in tensors.items()}

    def saved(self, config: PeftConfig) -> bool:
        """Whether the adapter's file holds the projections (``save_projection``)."""
        return bool(getattr(config, "save_projection", True))
