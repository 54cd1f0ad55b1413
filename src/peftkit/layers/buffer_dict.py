"""A per-adapter container of buffers (PEFT's ``BufferDict``): tensors that belong to an adapter, reach its state
dict and follow the module's device, but are not trained (e.g. VeLoRA's projection vector).

``layer.<name>[adapter]`` is a buffer registered under the adapter's name, so the module's state-dict key is
``<layer>.<name>.<adapter>``, as for a ``ParameterDict`` entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn


class BufferDict(nn.Module):
    """Buffers keyed by adapter name; ``persistent`` decides whether they are part of ``state_dict()``."""

    def __init__(self, buffers: Mapping[str, torch.Tensor] | None = None, persistent: bool = True) -> None:
        super().__init__()
        self.persistent = persistent
        for key, value in (buffers or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> torch.Tensor:
        buffer = self._buffers[key]
        assert buffer is not None  # every entry is set through __setitem__ with a tensor
        return buffer

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.register_buffer(key, value, persistent=self.persistent)

    def __delitem__(self, key: str) -> None:
        del self._buffers[key]
        self._non_persistent_buffers_set.discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._buffers)

    def keys(self) -> list[str]:
        return list(self._buffers)

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return [(key, self[key]) for key in self._buffers]

    def values(self) -> list[torch.Tensor]:
        return [self[key] for key in self._buffers]

    def extra_repr(self) -> str:
        return ", ".join(f"{key}: {tuple(value.shape)} {value.dtype}" for key, value in self.items())
