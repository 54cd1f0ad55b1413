"""Atomic file writes and safe tensor-file reads.

Every write goes to a staged file in the target directory and is renamed into place (:mod:`peftkit.io.commit`),
so an interrupted save never leaves a half-written adapter behind; reads turn library errors into
:class:`~peftkit.errors.CheckpointError` naming the file and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from peftkit.errors import CheckpointError
from peftkit.io.commit import commit_file

SAFETENSORS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a staged path next to ``path``, then rename it to ``path`` (see
    :func:`~peftkit.io.commit.commit_files`, which also cleans leftovers of killed saves there)."""
    path = os.path.abspath(os.fspath(path))
    commit_file(os.path.dirname(path), os.path.basename(path), write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)


def tensor_writer(tensors: dict[str, torch.Tensor], safe_serialization: bool = True) -> Callable[[str], None]:
    """A ``write(path)`` function saving a flat tensor dict as safetensors (metadata ``{"format": "pt"}``) or
    through ``torch.save``. Tensors are made contiguous and tensors sharing storage are cloned, as safetensors
    requires."""
    seen: set[tuple[int, int]] = set()
    clean: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        t = tensor.detach()
        ident = (t.untyped_storage().data_ptr(), int(t.storage_offset())) if t.device.type != "meta" else (id(t), 0)
        t = t.clone() if ident in seen else t
        seen.add(ident)
        clean[key] = t.contiguous()
    if safe_serialization:
        from safetensors.torch import save_file

        return lambda path: save_file(clean, path, metadata={"format": "pt"})
    return lambda path: torch.save(clean, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, safe_serialization: bool = True) -> None:
    """Save a flat tensor dict atomically (see :func:`tensor_writer`)."""
    atomic_write(path, tensor_writer(tensors, safe_serialization))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file, or a legacy ``.bin`` with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is truncated, corrupt, or holds something other than tensors.
    """
    path = os.fspath(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            data = load_file(path, device=str(device))
        else:
            data = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # safetensors raises its own error types; torch raises UnpicklingError/RuntimeError
        raise CheckpointError(
            f"Cannot read adapter weights from {path}: {type(exc).__name__}: {exc}. The file is corrupt, "
            "truncated or not a tensor file; save the adapter again."
        ) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in data.items()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors; save the adapter again.")
    return data
