"""Adapter-only checkpoints for transformers' ``Trainer``: save, resume and load-best for peftkit models.

Works for both model styles: a :class:`~peftkit.PeftModel` and a transformers model with adapters added
in place (``model.add_adapter``). A checkpoint directory holds, besides the Trainer's own files
(optimizer, scheduler, RNG state, ``trainer_state.json``), only adapter files:

* PeftModel: PEFT's layout (``default`` at the top, every other adapter in ``<dir>/<name>/``);
* in-place model: the active adapter at the top (what ``model.save_pretrained`` writes, so the checkpoint
  loads with ``from_pretrained``) and every other adapter in ``<dir>/<name>/``;
* ``adapter_checkpoint.json``: which adapter lives where, which are active and which were trainable.

Resuming copies the weights into the model's existing adapters in place (parameters keep their identity,
so the optimizer state restored by the Trainer lines up), creates adapters the model lacks, and restores
the active adapters and each adapter's trainability. :func:`peftkit.patch_transformers` routes the
Trainer's ``_save`` / ``_load_from_checkpoint`` / ``_load_best_model`` here for peftkit models; any other
model takes the Trainer's own path.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from peftkit.adapter_state import model_status, set_trainable_adapters
from peftkit.config import CONFIG_NAME, PeftConfig
from peftkit.errors import CheckpointError
from peftkit.integrations.transformers import has_adapters
from peftkit.io.files import atomic_write_text
from peftkit.io.load import read_weights
from peftkit.io.sharded import gather_adapter_state
from peftkit.io.state import adapter_tensors
from peftkit.mapping import set_peft_model_state_dict
from peftkit.methods.prompt.tuner import TRAINING_STATE_NAME
from peftkit.peft_model import PeftModel

#: The file that records a checkpoint's adapters (name -> sub-directory, trainable) and the active ones.
MANIFEST_NAME = "adapter_checkpoint.json"
TRAINING_ARGS_NAME = "training_args.bin"


def is_adapter_model(model: Any) -> bool:
    """``True`` for a peftkit ``PeftModel`` or a transformers model carrying peftkit adapters in place."""
    return isinstance(model, PeftModel) or has_adapters(model)


def _view(model: Any) -> tuple[dict, nn.Module, list[str]]:
    """``(adapter configs, inner model, active adapter names)`` of either model style."""
    if isinstance(model, PeftModel):
        return model.peft_config, model.get_base_model(), list(model.active_adapters)
    return model.peft_config, model, model.active_adapters()


def _trainable_adapters(model: nn.Module) -> frozenset[str]:
    """The adapters that train while adapters are enabled (recorded state, not ``requires_grad``, so that a
    checkpoint written inside ``disable_adapter()`` still records them)."""
    if isinstance(model, PeftModel):
        return model._tuner.status.trainable
    status = model_status(model)
    return status.trainable if status is not None else frozenset()


def _set_trainable_adapters(model: nn.Module, names: list[str]) -> None:
    if isinstance(model, PeftModel):
        model._tuner.set_trainable_adapters(names)
    else:
        set_trainable_adapters(model, names)


def save_adapter_checkpoint(
    model: nn.Module,
    output_dir: str | os.PathLike,
    safe_serialization: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write every adapter of ``model`` and the manifest into ``output_dir`` (no base weights).

    ``state_dict``: a full state dict of the model (gathered from FSDP shards or ZeRO-3 partitions) to take the
    values from instead of the live parameters.
    """
    configs, _, active = _view(model)
    if isinstance(model, PeftModel):
        model.save_pretrained(output_dir, safe_serialization=safe_serialization, state_dict=state_dict)
        layout = {name: "" if name == "default" else name for name in configs}
        if model._is_prompt_learning:  # encoders the adapter file cannot restore go into a side file
            for name, sub in layout.items():
                model._tuner.save_training_state(name, os.path.join(output_dir, sub))
    else:
        layout = {name: "" if name == active[0] else name for name in configs}
        for name, sub in layout.items():
            model.save_adapter(  # type: ignore[operator]  # a model with the adapter methods (checked by the caller) has these
                os.path.join(output_dir, sub), name, safe_serialization=safe_serialization, state_dict=state_dict
            )
    trainable = _trainable_adapters(model)
    adapters = {name: {"path": sub, "trainable": name in trainable} for name, sub in layout.items()}
    manifest = {"format_version": 1, "active_adapters": active, "adapters": adapters}
    atomic_write_text(os.path.join(output_dir, MANIFEST_NAME), json.dumps(manifest, indent=2, sort_keys=True))


def _read_manifest(model: nn.Module, checkpoint_dir: str) -> dict[str, Any]:
    path = os.path.join(checkpoint_dir, MANIFEST_NAME)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    # A checkpoint without a manifest (e.g. written by the reference peft): PEFT's layout.
    adapters: dict[str, dict[str, Any]] = {}
    if os.path.isfile(os.path.join(checkpoint_dir, CONFIG_NAME)):
        top = "default" if isinstance(model, PeftModel) else _view(model)[2][0]
        adapters[top] = {"path": ""}
    for entry in sorted(os.listdir(checkpoint_dir)):
        if os.path.isfile(os.path.join(checkpoint_dir, entry, CONFIG_NAME)):
            adapters[entry] = {"path": entry}
    if not adapters:
        raise CheckpointError(f"No adapter files in checkpoint {checkpoint_dir}; was it saved from this model?")
    return {"adapters": adapters}


def load_adapter_checkpoint(model: nn.Module, checkpoint_dir: str | os.PathLike) -> None:
    """Restore the adapters of a checkpoint written by :func:`save_adapter_checkpoint` into ``model``.

    Adapters the model has are overwritten in place (all checks first); missing ones are loaded. Then the
    checkpoint's active adapters and per-adapter trainability are restored, and the train/eval mode kept.

    Raises:
        CheckpointError: no adapter files, or a checkpoint that does not fit the model's adapters.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    manifest = _read_manifest(model, checkpoint_dir)
    training = model.training
    configs = _view(model)[0]
    for name, entry in manifest["adapters"].items():
        directory = os.path.join(checkpoint_dir, entry["path"])
        if _is_prompt_model(model):
            _restore_prompt_adapter(model, name, directory, bool(entry.get("trainable", True)))  # type: ignore[arg-type]  # checked
        elif name in configs:
            set_peft_model_state_dict(model, read_weights(directory), adapter_name=name)
        else:
            model.load_adapter(directory, adapter_name=name, is_trainable=bool(entry.get("trainable")))  # type: ignore[operator]  # a model with the adapter methods (checked by the caller) has these
    active = manifest.get("active_adapters")
    if active:
        model.set_adapter(active[0] if len(active) == 1 else list(active))  # type: ignore[operator]  # a model with the adapter methods (checked by the caller) has these
    recorded = {name: entry.get("trainable") for name, entry in manifest["adapters"].items()}
    if any(flag is not None for flag in recorded.values()):
        kept = [n for n in _trainable_adapters(model) if recorded.get(n) is None]  # adapters the manifest omits
        _set_trainable_adapters(model, kept + [n for n, flag in recorded.items() if flag])
    model.train(training)


def _is_prompt_model(model: nn.Module) -> bool:
    return isinstance(model, PeftModel) and model._is_prompt_learning


def _restore_prompt_adapter(model: PeftModel, name: str, directory: str, trainable: bool) -> None:
    """A prompt adapter from a checkpoint, in place: with its whole encoder when the checkpoint has the side file
    (added first, trainable form, when the model lacks it), else from the adapter file alone."""
    tuner = model._tuner
    if name not in tuner.peft_config:
        if not os.path.isfile(os.path.join(directory, TRAINING_STATE_NAME)):
            model.load_adapter(directory, adapter_name=name, is_trainable=trainable)
            return
        config = PeftConfig.from_pretrained(directory)
        config.inference_mode = not trainable
        model.add_adapter(name, config)
    tuner.load_training_state(name, read_weights(directory), directory)


# -- the Trainer's entry points (installed by peftkit.patch_transformers) -----------------------------------
def _unwrapped(trainer: Any, model: nn.Module | None = None) -> nn.Module:
    return trainer.accelerator.unwrap_model(model if model is not None else trainer.model)


def _is_sharded(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))


def _handles(trainer: Any, model: nn.Module | None = None, saving: bool = False) -> bool:
    """Peftkit saves its own models (also under DeepSpeed / FSDP, from gathered values), and loads them except
    under DeepSpeed / FSDP, whose engines restore their own checkpoints (adapters included)."""
    return (saving or not _is_sharded(trainer)) and is_adapter_model(_unwrapped(trainer, model))


def _gathered_state(trainer: Any, model: nn.Module, state_dict: dict | None) -> dict[str, torch.Tensor] | None:
    """Full adapter values to save under DeepSpeed / FSDP (``None``: read the live parameters).

    FSDP with a full state dict: the Trainer's ``state_dict`` (rank 0) is used. Otherwise every rank runs this
    (DeepSpeed: the Trainer calls ``_save`` on every rank; FSDP with a sharded state dict: :func:`trainer_save_model`),
    and the adapters' tensors alone are gathered collectively, whether or not the engine consolidated the state
    dict (DeepSpeed's ``stage3_gather_16bit_weights_on_model_save``).
    """
    if getattr(trainer, "is_fsdp_enabled", False) and state_dict is not None:
        return state_dict
    configs, inner, _ = _view(model)
    state: dict[str, torch.Tensor] = {}
    for name, config in configs.items():
        entries = adapter_tensors(inner, name, config, embedding_layers=False)
        gathered = gather_adapter_state(inner, entries)  # keyed as on disk; the save selects by model key
        state.update({entries[key].source: value for key, value in gathered.items()})
    return state


def _is_writer(trainer: Any) -> bool:
    """Whether this process writes the checkpoint files: one process per directory.

    ``args.should_save`` alone is not enough: under DeepSpeed's CPU accelerator accelerate sees one process per
    rank, so every rank reports itself as the main one while ``torch.distributed`` runs with the real world
    size. The process-group rank decides then (the local rank with ``save_on_each_node``).
    """
    if not trainer.args.should_save:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        return True
    if getattr(trainer.args, "save_on_each_node", False):
        return int(os.environ.get("LOCAL_RANK", "0")) == 0
    return dist.get_rank() == 0


def trainer_save(trainer: Any, output_dir: str | None = None, state_dict: dict | None = None) -> None:
    """``Trainer._save`` for peftkit models: adapter files + manifest, the tokenizer and the training args.

    Under DeepSpeed / FSDP the adapter values come from gathered tensors (see :func:`_gathered_state`); a save
    that would write partitioned or empty tensors raises :class:`~peftkit.errors.CheckpointError` instead.
    """
    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    model = _unwrapped(trainer)
    gathered = _gathered_state(trainer, model, state_dict) if _is_sharded(trainer) else None
    if not _is_writer(trainer):
        return
    os.makedirs(output_dir, exist_ok=True)
    save_adapter_checkpoint(model, output_dir, state_dict=gathered)
    tokenizer = trainer.processing_class or getattr(trainer.data_collator, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


def saves_sharded_fsdp(trainer: Any) -> bool:
    """An adapter model under the Trainer's FSDP with a sharded state dict: ``Trainer.save_model`` then writes no
    model files at all (it consolidates only a ``FULL_STATE_DICT``), so peftkit writes the adapter."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return False
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    full = "FULL_STATE_DICT" in str(getattr(plugin, "state_dict_type", ""))
    return not full and is_adapter_model(_unwrapped(trainer))


def trainer_load_from_checkpoint(trainer: Any, checkpoint_dir: str, model: nn.Module | None = None) -> None:
    """``Trainer._load_from_checkpoint`` for peftkit models."""
    load_adapter_checkpoint(_unwrapped(trainer, model), checkpoint_dir)


def trainer_load_best_model(trainer: Any) -> None:
    """``Trainer._load_best_model`` for peftkit models: the best checkpoint's adapters, in place."""
    load_adapter_checkpoint(_unwrapped(trainer), trainer.state.best_model_checkpoint)
