"""The data pass of EVA (see :mod:`peftkit.methods.lora.eva` for the method): find layers with equal inputs, run
incremental SVDs until every layer has converged for the rank it would receive, redistribute the ranks.

Every hook is removed when this returns or raises; the model's training mode is restored.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from itertools import cycle
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.hooks import RemovableHandle

from peftkit.errors import UsageError
from peftkit.methods.lora.calibration import model_device
from peftkit.methods.lora.eva_hooks import HashHook, SVDHook, move_to
from peftkit.targeting import pattern_value

#: ``rho`` above this is capped at ``largest parameter dimension // r`` (no layer can use more components).
_RHO_CAP_FROM = 1000


def _layer_fns(prepare: Callable | Mapping[str, Callable] | None, names: list[str]) -> dict[str, Callable | None]:
    if not isinstance(prepare, Mapping):
        return dict.fromkeys(names, prepare)
    unknown = sorted(set(prepare) - set(names))
    if unknown:
        raise UsageError(f"EVA: prepare_layer_inputs_fn names modules that are not EVA targets: {unknown}.")
    return {name: prepare.get(name) for name in names}


def _equal_input_groups(model: nn.Module, targets: list[tuple[str, Any]], fns: dict, gather: bool, run: Any) -> dict:
    """``{layer: first layer of its group}`` for layers whose first batch's input equals an earlier layer's."""
    hooks = {name: HashHook(name, fns[name], gather) for name, _ in targets}
    handles = [module.register_forward_hook(hooks[name]) for name, module in targets]
    try:
        run(hooks.values())
    finally:
        for handle in handles:
            handle.remove()
    silent = [name for name, hook in hooks.items() if not hook.hashed_inputs]
    if silent:
        raise UsageError(f"EVA: the first batch never reached these target layers: {silent}; check the data.")
    groups: dict[int, list[str]] = defaultdict(list)
    for name, hook in hooks.items():
        groups[hook.hashed_inputs[0]].append(name)
    return {other: names[0] for names in groups.values() for other in names[1:]}


def _max_components(model: nn.Module, config: Any, names: list[str]) -> tuple[dict[str, int], int]:
    """``round(rho * r)`` per layer (``rho`` capped for absurd values) and the rank budget ``sum of r``."""
    rho = config.eva_config.rho
    if rho > _RHO_CAP_FROM:
        rho = min(rho, max(max(p.shape) for p in model.parameters()) // config.r)
    ranks = {name: int(pattern_value(name, config.rank_pattern, config.r)) for name in names}
    return {name: round(rank * rho) for name, rank in ranks.items()}, sum(ranks.values())


def compute_eva_state_dict(
    model: nn.Module,
    dataloader: Iterable,
    config: Any,
    targets: list[tuple[str, Any]],
    forward_fn: Callable[[nn.Module, Any], Any],
    prepare_model_inputs_fn: Callable[[Any, Any], Any] | None,
    prepare_layer_inputs_fn: Callable | Mapping[str, Callable] | None,
    gather: bool,
    show_progress_bar: bool,
) -> dict[str, torch.Tensor]:
    """EVA's ``{layer: A (r', in)}`` for ``targets`` (see :func:`~peftkit.methods.lora.eva.get_eva_state_dict`)."""
    if len(dataloader) == 0:  # type: ignore[arg-type]  # a sized iterable (DataLoader, list)
        raise UsageError("EVA: the dataloader is empty.")
    gather = gather and dist.is_available() and dist.is_initialized()
    training, device = model.training, model_device(model)
    model.eval()
    names = [name for name, _ in targets]
    fns = _layer_fns(prepare_layer_inputs_fn, names)
    max_components, budget = _max_components(model, config, names)

    def batch_for(hooks: Iterable[Any], inputs: Any) -> Any:
        inputs = move_to(inputs, device)
        shared = prepare_model_inputs_fn(inputs, config) if prepare_model_inputs_fn else copy.deepcopy(inputs)
        for hook in hooks:
            hook.model_input = shared
        return inputs

    first = next(iter(dataloader))
    equal = _equal_input_groups(model, targets, fns, gather, lambda hooks: forward_fn(model, batch_for(hooks, first)))
    for group in {*equal.values()}:
        members = [group, *(n for n, g in equal.items() if g == group)]
        top = max(max_components[n] for n in members)
        for n in members:
            max_components[n] = top
    modules = dict(targets)
    svd_hooks = {
        name: SVDHook(name, fns[name], gather, max_components[name], config.eva_config.tau)
        for name in names
        if name not in equal
    }
    layer_hook = {**{name: name for name in svd_hooks}, **equal}
    try:
        ranks = _run_until_converged(model, dataloader, svd_hooks, modules, layer_hook, equal, max_components,
                                     budget, forward_fn, batch_for, show_progress_bar)  # fmt: skip
    finally:
        model.train(training)
    return _factors(svd_hooks, layer_hook, ranks, config.eva_config.whiten, device)


def _run_until_converged(
    model: nn.Module,
    dataloader: Iterable,
    hooks: dict[str, SVDHook],
    modules: dict[str, nn.Module],
    layer_hook: dict[str, str],
    equal: dict[str, str],
    max_components: dict[str, int],
    budget: int,
    forward_fn: Callable[[nn.Module, Any], Any],
    batch_for: Callable[[Iterable[Any], Any], Any],
    show_progress_bar: bool,
) -> dict[str, int]:
    """Feed batches until each hook layer's components up to its current rank have converged; a layer's hook is
    detached while it is converged and attached again if the redistribution asks it for more components."""
    handles: dict[str, RemovableHandle | None] = {n: modules[n].register_forward_hook(h) for n, h in hooks.items()}
    ranks = dict(max_components)
    try:
        for inputs in iterate_cycled(dataloader, show_progress_bar):
            for name, hook in hooks.items():
                converged = bool(torch.all(hook.converged[: ranks[name]]))
                if converged and handles[name] is not None:
                    handles[name].remove()  # type: ignore[union-attr]  # checked just above
                    handles[name] = None
                elif not converged and handles[name] is None:
                    handles[name] = modules[name].register_forward_hook(hook)
            if all(handle is None for handle in handles.values()):
                return ranks
            forward_fn(model, batch_for(hooks.values(), inputs))
            if all(hasattr(h.svd, "components_") for h in hooks.values()):
                ratios = {n: h.svd.explained_variance_ratio_[: max_components[n]] for n, h in hooks.items()}
                ranks = eva_rank_counts(ratios, layer_hook, equal, budget)
    finally:
        for handle in handles.values():
            if handle is not None:
                handle.remove()
    raise UsageError("EVA: the dataloader stopped before every layer converged.")  # cycle() never ends


def _factors(
    hooks: dict[str, SVDHook], layer_hook: dict[str, str], ranks: dict[str, int], whiten: bool, device: Any
) -> dict[str, torch.Tensor]:
    """``{layer: its hook's first r' components}`` (divided by ``sqrt(singular value)`` with ``whiten``)."""
    factors = {}
    for name, rank in ranks.items():
        svd = hooks[layer_hook[name]].svd
        components = svd.components_[:rank].clone()
        if whiten:
            components /= svd.singular_values_[:rank].sqrt().reshape(-1, 1)
        factors[name] = components if device is None else components.to(device)
    return factors


def eva_rank_counts(
    ratios: Mapping[str, torch.Tensor], layer_hook: Mapping[str, str], equal: Mapping[str, str], budget: int
) -> dict[str, int]:
    """Ranks after redistribution: the ``budget`` largest explained-variance ratios over all layers
    (``ratios[hook]`` per hook layer, shared by the layers in ``layer_hook``), counted per layer; within a group
    of layers with equal inputs the hook layer gets the largest count."""
    keys, values = zip(*[(layer, c) for layer, hook in layer_hook.items() for c in ratios[hook]], strict=True)
    order = torch.stack(values).argsort(descending=True)
    counted = Counter(keys[int(i)] for i in order[:budget])
    counts = {layer: counted.get(layer, 0) for layer in layer_hook}
    for layer, hook in equal.items():
        if counts[hook] < counts[layer]:
            counts[hook], counts[layer] = counts[layer], counts[hook]
    return counts


def iterate_cycled(dataloader: Iterable, show_progress_bar: bool) -> Iterable:
    """``dataloader`` repeated without end (with a progress bar when asked)."""
    batches = cycle(dataloader)
    if not show_progress_bar:
        return batches
    from tqdm.auto import tqdm  # type: ignore[import-untyped]  # tqdm ships no type stubs

    return tqdm(batches, position=0, leave=False)
