"""EVA's forward hooks and input preparation (see :mod:`peftkit.methods.lora.eva`).

A layer's input is turned into the rows fed to its SVD by ``prepare_layer_inputs_fn(layer_input, model_input,
layer_name) -> (n, in)``; ``model_input`` is what ``prepare_model_inputs_fn(inputs, config)`` made of the batch
(by default, for language modelling: the ``(batch, position)`` indices of the tokens that count, i.e. not padding
and, with ``use_label_mask``, not labelled ``label_mask_value``). Under ``torch.distributed`` each hook gathers
the rows of every rank, padded to the longest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from peftkit.errors import ArgumentTypeError
from peftkit.methods.lora.incremental_pca import IncrementalPCA

LayerInputsFn = Callable[[Any, Any, str], torch.Tensor]

#: Seed of the randomized SVD of every EVA layer (the reference's), so that the same data gives the same factors.
LOWRANK_SEED = 42


def _first_tensor(layer_input: Any, layer_name: str) -> torch.Tensor:
    if isinstance(layer_input, (tuple, list)):
        layer_input = layer_input[0]
    if not isinstance(layer_input, torch.Tensor):
        raise ArgumentTypeError(
            f"EVA: the input of layer {layer_name!r} is a {type(layer_input).__name__}, not a tensor; pass a "
            "prepare_layer_inputs_fn that returns its (rows, features) tensor."
        )
    return layer_input


def flatten_layer_inputs(layer_input: Any, model_input: Any, layer_name: str) -> torch.Tensor:
    """Every position of the layer's input as a row: ``(..., in) -> (N, in)``."""
    x = _first_tensor(layer_input, layer_name)
    return x.view(-1, x.size(-1)) if x.ndim > 2 else x


def prepare_model_inputs_fn_language_modeling(model_input: Any, peft_config: Any) -> torch.Tensor:
    """``(count, 2)`` indices ``(batch, position)`` of the tokens that enter the SVD: attended to and, with
    ``eva_config.use_label_mask``, not labelled ``label_mask_value``.

    Raises:
        ArgumentTypeError: the batch is not a dict (with ``input_ids``).
    """
    if not isinstance(model_input, dict):
        raise ArgumentTypeError("EVA's language-modelling input preparation takes dict batches (with input_ids).")
    mask = model_input.get("attention_mask", torch.ones_like(model_input["input_ids"])).bool()
    eva = peft_config.eva_config
    if eva.use_label_mask and "labels" in model_input:
        mask = torch.logical_and(mask, model_input["labels"] != eva.label_mask_value)
    return mask.nonzero()


def prepare_layer_inputs_fn_language_modeling(layer_input: Any, model_input: Any, layer_name: str) -> torch.Tensor:
    """The layer input's rows at the ``(batch, position)`` indices of
    :func:`prepare_model_inputs_fn_language_modeling`: ``(count, in)``."""
    return _first_tensor(layer_input, layer_name)[model_input.T.unbind()]


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` of every rank stacked (rank order), when ``torch.distributed`` is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    world = dist.get_world_size()
    local = torch.tensor([rows.shape[0]], device=rows.device)
    sizes_t = torch.empty(world, dtype=local.dtype, device=rows.device)
    dist.all_gather_into_tensor(sizes_t, local)
    sizes = sizes_t.tolist()
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)], dim=0)


class EvaHook:
    """Base of EVA's forward hooks: prepares the layer's rows (``model_input`` is set per batch by the driver)."""

    def __init__(self, name: str, prepare_layer_inputs_fn: LayerInputsFn | None, gather: bool) -> None:
        self.name = name
        self.prepare_fn: LayerInputsFn = prepare_layer_inputs_fn or flatten_layer_inputs
        self.gather = gather
        self.model_input: Any = None

    @torch.no_grad()
    def rows(self, layer_input: Any) -> torch.Tensor:
        """The ``(n, in)`` rows of this batch (every rank's under ``torch.distributed`` with ``gather``)."""
        rows = self.prepare_fn(layer_input, self.model_input, self.name)
        return gather_rows(rows) if self.gather else rows


class HashHook(EvaHook):
    """Records a hash of each batch's rows, to find layers that see the same input (one SVD serves them all)."""

    def __init__(self, name: str, prepare_layer_inputs_fn: LayerInputsFn | None, gather: bool) -> None:
        super().__init__(name, prepare_layer_inputs_fn, gather)
        self.hashed_inputs: list[int] = []

    def __call__(self, module: torch.nn.Module, layer_input: Any, output: Any) -> None:
        """Forward hook: hash this batch's rows."""
        self.hashed_inputs.append(hash(tuple(self.rows(layer_input).cpu().view(-1).tolist())))


class SVDHook(EvaHook):
    """Folds each batch's rows into an :class:`IncrementalPCA` of ``n_components`` components and marks the
    components whose cosine similarity to the previous step's reaches ``sim_thresh`` as converged."""

    def __init__(
        self,
        name: str,
        prepare_layer_inputs_fn: LayerInputsFn | None,
        gather: bool,
        n_components: int,
        sim_thresh: float,
    ) -> None:
        super().__init__(name, prepare_layer_inputs_fn, gather)
        self.n_components = n_components
        self.sim_thresh = sim_thresh
        self.svd = IncrementalPCA(n_components=n_components, copy=True, lowrank=True, lowrank_seed=LOWRANK_SEED)
        self.converged = torch.zeros((n_components,), dtype=torch.bool)

    @torch.no_grad()
    def __call__(self, module: torch.nn.Module, layer_input: Any, output: Any) -> None:
        """Forward hook: one incremental-SVD step on this batch's rows, then the convergence check."""
        previous = self.svd.components_.clone() if hasattr(self.svd, "components_") else None
        rows = self.rows(layer_input)
        if rows.size(0) < self.n_components:
            return  # too few rows in this batch for the components asked for: the next batch will do
        self.svd.partial_fit(rows.to(torch.float32))
        if previous is None:
            return
        components = self.svd.components_
        if components.dim() == 1:
            components, previous = components.reshape(1, -1), previous.reshape(1, -1)
        self.converged = torch.nn.functional.cosine_similarity(components, previous) >= self.sim_thresh


def move_to(inputs: Any, device: torch.device | None) -> Any:
    """``inputs`` (a tensor, or mappings / sequences of them) on ``device``; other values as they are."""
    if device is None:
        return inputs
    if hasattr(inputs, "to"):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return type(inputs)({k: move_to(v, device) for k, v in inputs.items()})  # type: ignore[call-arg]  # dict-like
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move_to(v, device) for v in inputs)
    return inputs
