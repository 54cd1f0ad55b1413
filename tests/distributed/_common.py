"""What the multi-process workers share: a tiny Llama, a fixed batch, a one-process reference run, and the
launcher that runs a worker script under ``torchrun`` with 2 gloo processes on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tests.integration._transformers_fixtures import tiny_llama
from torch import nn

import peftkit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORLD = 2
STEPS = 4  # training steps of a full run; checkpoints are taken after step RESUME_AT
RESUME_AT = 2
LR = 0.05


def lora_config() -> peftkit.LoraConfig:
    return peftkit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)


def peft_model(seed: int = 0, adapter_seed: int = 1) -> nn.Module:
    base = tiny_llama(seed)
    torch.manual_seed(adapter_seed)
    model = peftkit.get_peft_model(base, lora_config())
    with torch.no_grad():  # non-zero B, so that the adapter matters from the first step
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


def batch(step: int, rows: int = 4, length: int = 8) -> torch.Tensor:
    """The full batch of ``step`` (every process builds the same one and takes its share)."""
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, 64, (rows, length), generator=generator)


def share(ids: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return ids.chunk(world)[rank]


def reference_run(
    steps: int = STEPS, batch_of: Callable[[int], torch.Tensor] = batch
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process, full batches (``batch_of(step)``): the losses and final adapter a distributed run must give."""
    model = peft_model()
    optimizer = adamw(model)
    losses = []
    for step in range(steps):
        ids = batch_of(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in peftkit.get_peft_model_state_dict(model).items()}


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of every run (no weight decay, as the Trainer runs are configured)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(script: str, scenario: str, out: Path, env: dict[str, str] | None = None, timeout: int = 240) -> dict:
    """Run ``script scenario out`` under torchrun (2 processes, gloo, CPU); return rank 0's ``result.json``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        f"--master_port={free_port()}",
        str(HERE / script),
        scenario,
        str(out),
    ]
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(env or {}))
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        tail = f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        raise AssertionError(f"{script} {scenario} failed ({done.returncode}):\n{tail}")
    return json.loads((out / "result.json").read_text())


def write_result(out: Path, result: dict[str, Any]) -> None:
    (out / "result.json").write_text(json.dumps(result))
