"""Worker script (run by torchrun, 2 gloo processes): DDP and FSDP2 (``fully_shard``) training of a
peftkit LoRA model, with adapter-only checkpoints and a resume; rank 0 writes ``result.json``.

Every process builds the same full batch and trains on its half, so the averaged gradients, and the losses
averaged over the processes, are those of one process on the full batch (compared by the tests).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tests.distributed._common import RESUME_AT, STEPS, adamw, batch, peft_model, share, tiny_llama, write_result
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

import peftkit
from peftkit.errors import CheckpointError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range, on_step: Callable[[int], None]) -> list:
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for step in steps:
        on_step(step)
        ids = share(batch(step), rank, world)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
    return losses


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model.get_base_model().model.layers:  # frozen base and its adapters: one unit per layer
        fully_shard(layer)
    fully_shard(model)
    return model


def plain_save_error(model: nn.Module, directory: Path) -> str:
    try:
        model.save_pretrained(directory)
    except CheckpointError as exc:
        return str(exc) + (" [directory written]" if directory.exists() else "")
    return "no error"


def fsdp2(out: Path) -> dict:
    rank = dist.get_rank()
    model = shard(peft_model())
    optimizer = adamw(model)

    def checkpoint(step: int) -> None:
        if step != RESUME_AT:
            return
        state = get_model_state_dict(model, options=FULL)
        model.save_pretrained(out / "ckpt", state_dict=state, is_main_process=rank == 0)
        optim = get_optimizer_state_dict(model, optimizer, options=FULL)
        if rank == 0:
            torch.save(optim, out / "ckpt" / "optimizer.pt")

    losses = train(model, optimizer, range(STEPS), checkpoint)
    state = get_model_state_dict(model, options=FULL)
    model.save_pretrained(out / "final", state_dict=state, is_main_process=rank == 0)
    if rank == 0:  # with cpu_offload=True the full state dict exists on rank 0 only
        via_function = peftkit.get_peft_model_state_dict(model, state_dict=state)
        save_file({k: v.contiguous() for k, v in via_function.items()}, out / "via_function.safetensors")
    gathered = peftkit.gather_peft_model_state_dict(model)  # every rank: the adapter's tensors only
    model.save_pretrained(out / "gathered", state_dict=gathered, is_main_process=rank == 0)
    error = plain_save_error(model, out / f"plain{rank}")
    dist.barrier()

    resumed = shard(peftkit.PeftModel.from_pretrained(tiny_llama(), out / "ckpt", is_trainable=True))
    optimizer = adamw(resumed)
    optim = torch.load(out / "ckpt" / "optimizer.pt", weights_only=False)
    set_optimizer_state_dict(resumed, optimizer, optim_state_dict=optim, options=FULL)
    resumed_losses = train(resumed, optimizer, range(RESUME_AT, STEPS), lambda step: None)
    state = get_model_state_dict(resumed, options=FULL)
    resumed.save_pretrained(out / "resumed", state_dict=state, is_main_process=rank == 0)
    return {"losses": losses, "resumed_losses": resumed_losses, "plain_save_error": error}


def ddp(out: Path) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    rank = dist.get_rank()
    model = DistributedDataParallel(peft_model())
    optimizer = adamw(model)

    def checkpoint(step: int) -> None:
        if step == RESUME_AT and rank == 0:
            model.module.save_pretrained(out / "ckpt")
            torch.save(optimizer.state_dict(), out / "ckpt" / "optimizer.pt")
            save_file(peftkit.get_peft_model_state_dict(model), out / "ckpt_via_ddp.safetensors")
        dist.barrier()

    losses = train(model, optimizer, range(STEPS), checkpoint)
    if rank == 0:
        model.module.save_pretrained(out / "final")
    dist.barrier()
    resumed = DistributedDataParallel(peftkit.PeftModel.from_pretrained(tiny_llama(), out / "ckpt", is_trainable=True))
    optimizer = adamw(resumed)
    optimizer.load_state_dict(torch.load(out / "ckpt" / "optimizer.pt", weights_only=True))
    resumed_losses = train(resumed, optimizer, range(RESUME_AT, STEPS), lambda step: None)
    if rank == 0:
        resumed.module.save_pretrained(out / "resumed")
    return {"losses": losses, "resumed_losses": resumed_losses}


SCENARIOS = {"fsdp2": fsdp2, "ddp": ddp}


def main() -> None:
    scenarios, out = sys.argv[1].split(","), Path(sys.argv[2])
    dist.init_process_group("gloo")
    try:  # several scenarios in one launch: process start-up dominates these tiny runs
        result = {}
        for name in scenarios:
            (out / name).mkdir(parents=True, exist_ok=True)
            result[name] = SCENARIOS[name](out / name)
        if dist.get_rank() == 0:
            write_result(out, result)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
