"""Several LoRA adapters of one linear layer as stacked tensors: mixed batches, and a name-free forward for
``torch.compile``.

For adapters ``a_0 .. a_{K-1}`` (plus one all-zero slot ``K`` for the bare base model) of a layer with input
size ``in`` and output size ``out``, and ``R`` the largest rank (smaller ranks zero-padded, which is exact:
the padded rows of ``A`` and columns of ``B`` are zero, so ``B_pad A_pad = B A``)::

    A_t (K + 1, in, R):   A_t[k] = A_k^T
    B_t (K + 1, R, out):  B_t[k] = s_k B_k^T      (the scaling folded in)

A sample ``i`` routed to slot ``k_i`` computes ``y_i = base(x_i) + x_i A_t[k_i] B_t[k_i]``: one base forward
plus two batched matmuls, whatever the number of distinct adapters; the index ``k`` is a tensor, so neither
the cost nor a compiled graph depends on which adapters a batch mixes. Several adapters active at once
(``set_adapter([a, b])``) sum, which is one LoRA of concatenated rank: ``x [A_t[a] | A_t[b]] [B_t[a]; B_t[b]]``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules import module as module_hooks


def _scaled_factors(layer: Any, name: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A^T (in, R), s B^T (R, out))`` of adapter ``name``, zero-padded to rank ``R``."""
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    a_t, b_t = A.t(), (B * layer.scaling[name]).t()
    pad = rank - A.shape[0]
    if pad:
        a_t, b_t = F.pad(a_t, (0, pad)), F.pad(b_t, (0, 0, 0, pad))
    return a_t, b_t


def concatenated_factors(layer: Any, adapters: Sequence[str], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_cat (in, n R), B_cat (n R, out))``: the ``n`` adapters summed as one LoRA of concatenated rank,
    ``x A_cat B_cat = sum_k s_k x A_k^T B_k^T``, each zero-padded to rank ``R`` (no autograd)."""
    with torch.no_grad():
        parts = [_scaled_factors(layer, name, rank) for name in adapters]
        return torch.cat([a for a, _ in parts], dim=1), torch.cat([b for _, b in parts])


def stack_factors(layer: Any, adapters: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A_t, B_t)`` of ``layer`` over ``adapters`` (slots the layer does not hold, and the last, are zero).

    Plain tensor operations on the live parameters, so the result is current whether it runs eagerly or is
    traced by ``torch.compile``.
    """
    held = [name for name in adapters if name in layer.lora_A]
    rank = max(layer.lora_A[name].weight.shape[0] for name in held)
    ref = layer.lora_A[held[0]].weight
    zero_a, zero_b = ref.new_zeros(layer.in_features, rank), ref.new_zeros(rank, layer.out_features)
    parts = [_scaled_factors(layer, name, rank) if name in layer.lora_A else (zero_a, zero_b) for name in adapters]
    parts.append((zero_a, zero_b))
    return torch.stack([a for a, _ in parts]), torch.stack([b for _, b in parts])


#: The count of :class:`Registrations`, in a plain dict so that a :class:`~peftkit.layers.watch.Watch` entry can
#: follow it (each increment stores a new ``int`` object).
COUNT: dict[str, int] = {"registrations": 0}


class Registrations:
    """A process-wide count of module and parameter registrations (``nn.Module.__setattr__``,
    ``register_parameter``, ``add_module``, ``ModuleDict.__setitem__``) on *watched* modules: the LoRA layers
    whose stacks or one-adapter plans are cached, their ``lora_A`` / ``lora_B`` / ``lora_dropout`` dictionaries
    and factor modules. Counted by torch's
    global registration hooks, installed the first time a stack is built (other modules pay one attribute read
    per registration). A cached stack whose count is unchanged knows that none of its modules or weights was
    replaced since, without walking them. The count itself is ``COUNT["registrations"]``."""

    installed = False

    @classmethod
    def install(cls) -> None:
        """Install the hooks (once). A compiled transformers model guards on the number of registration hooks
        (its forward slices a ``ModuleList``), so the compiled entry point installs them before anything traces."""
        if not cls.installed:
            module_hooks.register_module_parameter_registration_hook(cls._registered)
            module_hooks.register_module_module_registration_hook(cls._registered)
            cls.installed = True

    @classmethod
    def watch(cls, modules: list[Any]) -> None:
        cls.install()
        for module in modules:
            module.__dict__["_peftkit_watched"] = True

    @classmethod
    def _registered(cls, module: Any, _name: str, _value: Any) -> None:
        if module.__dict__.get("_peftkit_watched"):
            COUNT["registrations"] += 1


_VERSION = operator.attrgetter("_version")
#: The most sets of slots whose flat freshness lists a cached stack keeps.
_FLAT_CHECKS = 64


@dataclass(frozen=True)
class _Built:
    """What a cached stack was built from: the adapters, the registration count, the number of factor modules,
    the scalings (the very objects), and per slot the versions of that adapter's weights (and tensor scaling)
    at build time, read through aliases (``detach()``: same version counter).

    :meth:`fresh` runs per layer and call, cold in the cache after a decode step streamed the model's weights:
    walking 64 modules per layer (32 adapters) cost milliseconds per step. A replaced module or weight is
    caught by the registration count instead, a deleted one by the counts, an in-place edit by the versions of
    the slots the call reads (a stale slot that the call does not read cannot change its output; a later call
    that reads it finds it stale). Those versions are read from one flat list of aliases per set of slots
    (made once, allocated together, so close in memory) by ``map`` over a C getter: no Python frame per weight.
    """

    adapters: tuple[str, ...]
    registrations: int
    factors: tuple[int, int]
    scaling: dict[str, Any]
    scalings: list[Any]
    aliases: list[tuple[torch.Tensor, ...]]
    versions: list[tuple[int, ...]]
    entries: list[tuple[tuple[dict[str, Any], Any], ...]]
    flat: dict[tuple[int, ...], tuple[list[Any], ...]] = field(default_factory=dict)

    @staticmethod
    def _factors(layer: Any) -> tuple[int, int]:
        return len(layer._modules["lora_A"]._modules), len(layer._modules["lora_B"]._modules)

    @classmethod
    def record(cls, layer: Any, adapters: tuple[str, ...]) -> _Built:
        containers = layer._modules["lora_A"], layer._modules["lora_B"]
        factors = containers[0]._modules, containers[1]._modules
        Registrations.watch([layer, *containers, *factors[0].values(), *factors[1].values()])
        aliases, entries = [], []
        for name in adapters:
            tensors = [f[name]._parameters["weight"] for f in factors if name in f]
            entries.append(tuple((f[name]._parameters, f[name]._parameters["weight"]) for f in factors if name in f))
            tensors += [s for s in [layer.scaling.get(name)] if isinstance(s, torch.Tensor)]
            aliases.append(tuple(t.detach() for t in tensors))
        versions = [tuple(map(_VERSION, slot)) for slot in aliases]
        scaling, registrations = layer.scaling, COUNT["registrations"]
        counts = cls._factors(layer)
        return cls(adapters, registrations, counts, scaling, list(scaling.values()), aliases, versions, entries)

    def _flat(self, slots: tuple[int, ...]) -> tuple[list[Any], ...]:
        """``(aliases, versions, parameter dicts, weights)`` of ``slots``, flattened once per set of slots (at
        most :data:`_FLAT_CHECKS` kept)."""
        found = self.flat.get(slots)
        if found is None:
            if len(self.flat) >= _FLAT_CHECKS:
                self.flat.clear()
            aliases = [t.detach() for k in slots for t in self.aliases[k]]
            entries = [entry for k in slots for entry in self.entries[k]]
            versions = [v for k in slots for v in self.versions[k]]
            found = self.flat[slots] = (aliases, versions, [d for d, _ in entries], [w for _, w in entries])
        return found

    def fresh(self, layer: Any, adapters: tuple[str, ...], slots: tuple[int, ...]) -> bool:
        """Whether ``layer`` still holds the same modules, weights and scalings, and the adapters in ``slots``
        were not changed in place since."""
        if adapters != self.adapters or COUNT["registrations"] != self.registrations:
            return False
        scaling = layer.scaling
        if scaling is not self.scaling or len(scaling) != len(self.scalings) or self._factors(layer) != self.factors:
            return False
        if not all(map(operator.is_, scaling.values(), self.scalings)):
            return False
        aliases, versions, dicts, weights = self._flat(slots)
        if not all(map(operator.is_, map(dict.get, dicts, repeat("weight")), weights)):
            return False  # a weight put straight into ``_parameters`` (as accelerate does): no hook saw it
        return list(map(_VERSION, aliases)) == versions


def cached_stacks(
    layer: Any, adapters: tuple[str, ...], slots: tuple[int, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`stack_factors`, built once and reused until an adapter's weights or scaling change; ``None``
    when the layer is not :func:`stackable` (checked when building, since a fresh cache implies the same
    adapter modules).

    Args:
        slots: The slots (positions in ``adapters``) the caller will read; only their in-place edits are looked
            for (default: all). Replaced modules, weights and scalings are caught whatever the slots.

    The cache lives in ``layer._stack_cache``; anything that replaces factors or scalings outside
    in-place tensor updates (which bump versions) or module registration must set it to ``None``.
    """
    cache = layer._stack_cache
    if cache is not None and cache[0].fresh(layer, adapters, tuple(range(len(adapters))) if slots is None else slots):
        return cache[1], cache[2]
    if not stackable(layer):
        return None
    built = _Built.record(layer, adapters)
    with torch.no_grad():
        A_t, B_t = stack_factors(layer, adapters)
    layer._stack_cache = (built, A_t, B_t)
    return A_t, B_t


def add_routed(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """``result_i + x_i A_t[slots_i] B_t[slots_i]`` for every sample ``i`` (in place where possible).

    Shapes: ``x (batch, ..., in)``, ``result (batch, ..., out)``, ``slots (batch,)``.
    """
    batch = x.shape[0]
    h = torch.bmm(x.reshape(batch, -1, x.shape[-1]).to(A_t.dtype), A_t.index_select(0, slots))
    B_sel = B_t.index_select(0, slots)
    if result.dtype == B_t.dtype and result.is_contiguous() and not torch.compiler.is_compiling():
        result.view(batch, -1, result.shape[-1]).baddbmm_(h, B_sel)
        return result
    return result + torch.bmm(h, B_sel).view(result.shape).to(result.dtype)


#: Up to this many rows (tokens times batch), traced on the CPU, :func:`low_rank_product` is written as
#: reductions that Inductor fuses into the layer's neighbouring kernels, instead of two library products.
SMALL_ROWS = 8


def low_rank_product(x: torch.Tensor, A_cat: torch.Tensor, B_cat: torch.Tensor) -> torch.Tensor:
    """``(x A_cat) B_cat`` for ``x (..., in)``, ``A_cat (in, k)``, ``B_cat (k, out)``: ``(..., out)``.

    At decode (a few rows of a known, static count on the CPU) as two broadcast multiply-sums: Inductor emits
    them as loops fused with the adds and casts around them, where two ``mm`` calls per adapted layer were
    each a library call of their own (on a two-layer Llama at one token, 28 extra calls: about 6% of the
    compiled step). Otherwise, or with a symbolic row count (no guard on it is added), two matrix products.
    """
    rows = x.numel() // x.shape[-1]
    if type(rows) is int and rows <= SMALL_ROWS and x.device.type == "cpu":
        hidden = (x.unsqueeze(-1) * A_cat).sum(-2)
        return (hidden.unsqueeze(-1) * B_cat).sum(-2)
    return (x @ A_cat) @ B_cat


def add_active(
    result: torch.Tensor, x: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """``result + sum_k x A_t[k] B_t[k]`` over the active ``slots (n,)``: one LoRA of concatenated rank."""
    count, width, rank = slots.shape[0], A_t.shape[1], A_t.shape[2]
    A_cat = A_t.index_select(0, slots).transpose(0, 1).reshape(width, count * rank)
    B_cat = B_t.index_select(0, slots).reshape(count * rank, B_t.shape[2])
    return result + low_rank_product(x.to(A_t.dtype), A_cat, B_cat).to(result.dtype)


def slots_of(adapters: Sequence[str], wanted: Sequence[str], device: torch.device) -> torch.Tensor:
    """``(n,)`` positions of ``wanted`` in ``adapters`` (those absent are left out)."""
    position = {name: i for i, name in enumerate(adapters)}
    return torch.tensor([position[n] for n in wanted if n in position], dtype=torch.long, device=device)


def stackable(layer: Any) -> bool:
    """Whether every adapter of ``layer`` fits the stacked form (plain LoRA: no DoRA, no ``lora_B`` bias)."""
    return not any(
        layer.use_dora.get(n) or n in layer.lora_variant or layer.lora_B[n].bias is not None for n in layer.lora_A
    )


def needs_grad(layer: Any) -> bool:
    """Whether a forward of ``layer`` now records gradients for an adapter (stacks are inference-only)."""
    return torch.is_grad_enabled() and any(p.requires_grad for _, p in layer.all_adapter_parameters())
