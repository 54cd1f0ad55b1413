"""Inference entry points of a transformers model that carries peftkit's adapter methods.

Once the model has adapters, calling it and ``generate`` accept ``adapter_names`` (one adapter name per
input row, ``"__base__"`` for none), as ``PeftModel`` does, and hold the model's lock shared
(:mod:`peftkit.locking`), so that a concurrent ``set_adapter`` / ``load_adapter`` / merge waits for them.
``generate`` routes the copies of each row that it makes for beams and ``num_return_sequences`` through that
row's adapter. The ``forward`` signature stays the original class's (``Trainer`` reads it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from peftkit import functional as F
from peftkit.compile_frames import eager_frame
from peftkit.errors import UsageError


class InferenceMixin:
    """``__call__`` and ``generate`` with per-sample ``adapter_names`` and the model's shared lock."""

    @eager_frame  # argument plumbing only; the model below it is what compiles
    def __call__(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Call the model; ``adapter_names`` (one per sample, ``"__base__"`` for none) routes a mixed batch."""
        with self._peftkit_call(adapter_names, expand=False):
            return super().__call__(*args, **kwargs)  # type: ignore[misc]

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The model's ``generate``; ``adapter_names`` routes each input row (and its copies) to an adapter."""
        with self._peftkit_call(adapter_names, expand=True):
            return super().generate(*args, **kwargs)  # type: ignore[misc]

    @contextmanager
    def _peftkit_call(self, adapter_names: Sequence[str] | None, expand: bool) -> Iterator[None]:
        if not self.__dict__.get("_hf_peft_config_loaded"):
            if adapter_names is not None:
                raise UsageError("adapter_names needs adapters; call model.add_adapter or model.load_adapter first.")
            yield
            return
        with F.inference_call(self, adapter_names, expand=expand, training=self.training):  # type: ignore[arg-type,attr-defined]
            yield
