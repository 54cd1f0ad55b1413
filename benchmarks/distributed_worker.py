"""Worker of :mod:`benchmarks.distributed` (run by torchrun, 2 gloo processes on the CPU): the time and size of an
adapter-only checkpoint of a sharded model, peftkit vs the reference peft, under FSDP2 or DeepSpeed ZeRO-3.

Both libraries save from the engine's own full gather (FSDP2: ``get_model_state_dict(full_state_dict=True,
cpu_offload=True)``; ZeRO-3: ``_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)``, what the
Trainer does); peftkit also with :func:`peftkit.gather_peft_model_state_dict`, which gathers the adapter's
tensors only. Rank 0 writes ``{figure: {"ms": [...], "bytes": n}}`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import peft
import torch
import torch.distributed as dist
from torch import nn

import peftkit
from benchmarks.models import SMALL, build_model_fast, kit_config, lora_kwargs, peft_config

REPS = 3
ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": 1,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
    "zero_allow_untested_optimizer": True,
}


def wrapped(library: str) -> nn.Module:
    base = build_model_fast(SMALL)
    targets = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    if library == "peftkit":
        return peftkit.get_peft_model(base, kit_config(**lora_kwargs(**targets)))
    return peft.get_peft_model(base, peft_config(**lora_kwargs(**targets)))


def timed(save: Callable[[str], None]) -> dict:
    """Median-ready times (ms, rank 0's wall clock, all ranks in step) and the adapter file's size."""
    times, size = [], 0
    for _ in range(REPS + 1):
        with tempfile.TemporaryDirectory() as directory:
            dist.barrier()
            start = time.perf_counter()
            save(directory)
            dist.barrier()
            times.append((time.perf_counter() - start) * 1e3)
            path = os.path.join(directory, "adapter_model.safetensors")
            size = os.path.getsize(path) if dist.get_rank() == 0 else 0
    return {"ms": times[1:], "bytes": size}


def adapter_only_save(model: nn.Module, rank0: bool) -> Callable[[str], None]:
    """A save of ``model``'s adapter that gathers only the adapter's tensors (every rank calls it)."""

    def save(directory: str) -> None:
        state = peftkit.gather_peft_model_state_dict(model)
        model.save_pretrained(directory, state_dict=state, is_main_process=rank0)

    return save


def fsdp2() -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from peftkit.integrations.fsdp import fully_shard_model

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    rank0 = dist.get_rank() == 0
    results = {}
    for library in ("peftkit", "peft"):
        model = wrapped(library)
        if library == "peftkit":
            fully_shard_model(model)
        else:
            for layer in model.get_base_model().model.layers:
                fully_shard(layer)
            fully_shard(model)

        def engine_gather(directory: str, model: nn.Module = model) -> None:
            model.save_pretrained(
                directory, state_dict=get_model_state_dict(model, options=full), is_main_process=rank0
            )

        results[f"FSDP2 save, full gather ({library})"] = timed(engine_gather)
        if library == "peftkit":
            results["FSDP2 save, adapter-only gather (peftkit)"] = timed(adapter_only_save(model, rank0))
    return results


def zero3() -> dict:
    import deepspeed

    rank0 = dist.get_rank() == 0
    results = {}
    for library in ("peftkit", "peft"):
        model = wrapped(library)
        params = [p for p in model.parameters() if p.requires_grad]
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ZERO3)

        def engine_gather(directory: str, engine: object = engine, model: nn.Module = model) -> None:
            state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)  # type: ignore[attr-defined]
            model.save_pretrained(directory, state_dict=state, is_main_process=rank0)

        results[f"ZeRO-3 save, consolidated state dict ({library})"] = timed(engine_gather)
        if library == "peftkit":
            results["ZeRO-3 save, adapter-only gather (peftkit)"] = timed(adapter_only_save(model, rank0))
    return results


def main() -> None:
    engine, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    try:
        results = {"fsdp2": fsdp2, "zero3": zero3}[engine]()
        if dist.get_rank() == 0:
            out.write_text(json.dumps(results))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
