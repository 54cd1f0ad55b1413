"""One check, per model and compiled call, that nothing the layers' prepared tensors were built from changed.

The entry of a compiled call (:mod:`peftkit.layers.compiled_call`) used to ask every adapter layer whether its
prepared factors were still current: per layer a handful of Python calls, run cold after a decode step had
streamed the model's weights through the caches (about 0.2 ms of a 6 ms one-token step of a two-layer Llama
with 14 adapted layers). Each layer now says, when it prepares, what its tensors depend on (a :class:`Watch`),
and :class:`ModelWatch` checks all of them at once with C-level ``map`` over flat lists:

* the identity of every object reached through a mapping (``mapping[key] is value``): replaced modules,
  weights, scalings, the active-adapter list (a switch replaces it), a ``lora_B`` bias added;
* the version counter of every tensor read (``tensor._version``, bumped by any in-place write through the
  tensor or a view of it; a write through ``tensor.data`` is not seen, as by autograd);
* the layers' ``training`` flags, the list of layers itself (found again whenever the model's lock generation
  moved: adding, deleting or switching adapters) and gradient mode (with gradients on, every layer checks
  itself, since ``requires_grad`` can change without any of the above).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from peftkit.compile_frames import eager_frame

_VERSION = operator.attrgetter("_version")
_TRAINING = operator.attrgetter("training")


@dataclass
class Watch:
    """What one layer's prepared tensors were built from.

    Attributes:
        entries: ``(mapping, key, value)``: ``mapping.get(key)`` must still be ``value`` (the very object).
            ``mapping`` is a ``dict`` (``module._modules``, ``module._parameters``, ``layer.scaling``...).
        tensors: Tensors whose version counters must not have moved.
    """

    entries: list[tuple[dict[Any, Any], Any, Any]] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)

    def entry(self, mapping: dict[Any, Any], key: Any) -> Any:
        """Watch ``mapping[key]`` (``None`` when absent) and return it."""
        value = mapping.get(key)
        self.entries.append((mapping, key, value))
        return value


class ModelWatch:
    """The :class:`Watch` of every prepared layer of a model, flattened, with the layers' state at that time."""

    def __init__(self, layers: list[Any], watches: list[Watch]) -> None:
        self.layers = layers
        entries = [e for w in watches for e in w.entries]
        self.mappings, self.keys, self.values = (
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
        )
        self.tensors = [t for w in watches for t in w.tensors]
        self.versions = list(map(_VERSION, self.tensors))

    @eager_frame  # called by the (eagerly run) entry of a compiled call: never traced
    def fresh(self, layers: list[Any]) -> bool:
        """Whether ``layers`` (the model's prepared layers now) are those watched and nothing watched changed."""
        if layers is not self.layers or torch.is_grad_enabled() or any(map(_TRAINING, layers)):
            return False
        if list(map(_VERSION, self.tensors)) != self.versions:
            return False
        return all(map(operator.is_, map(dict.get, self.mappings, self.keys), self.values))
