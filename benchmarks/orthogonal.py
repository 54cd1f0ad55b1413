"""OFT and BOFT training steps (forward + backward) and the activations they save, on a stack of Linear layers.

Floor: the bare stack's forward + backward to its input. The reference's BOFT runs its pure-torch path (its
CUDA extension is declared unavailable, which is what it does on a CPU, minus one compile attempt per layer).
"""

from __future__ import annotations

import copy
from typing import Any

import peft
import peft.tuners.boft.layer as reference_boft
import torch
from torch import nn

import peftkit
from benchmarks.harness import (
    FLOOR,
    PEFT,
    PEFTKIT,
    Case,
    Row,
    SavedActivations,
    Settings,
    close,
    interleaved,
    square_loss_step,
)
from benchmarks.models import StackShape, linear_stack

PRESETS = {"full": StackShape(1024, 4, 256), "quick": StackShape(512, 4, 128), "tiny": StackShape(32, 2, 8)}

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "OFT, block 32": ("OFTConfig", {"oft_block_size": 32, "r": 0}),
    "BOFT, block 8": ("BOFTConfig", {"boft_block_size": 8}),
}


def pair(base: nn.Module, config_class: str, fields: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """``(peftkit model, peft model)`` with the same random adapter on every layer."""
    targets = [str(i) for i in range(len(base))]
    ref = peft.get_peft_model(copy.deepcopy(base), getattr(peft, config_class)(target_modules=targets, **fields))
    kit = peftkit.get_peft_model(copy.deepcopy(base), getattr(peftkit, config_class)(target_modules=targets, **fields))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in ref.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=gen).to(param.device))
    kit.load_state_dict({k: v for k, v in ref.state_dict().items() if "oft_" in k}, strict=False)
    return kit, ref


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    reference_boft.get_fbd_cuda = lambda: None  # the reference's CPU path, without the compile attempt
    base = linear_stack(shape, settings.device).requires_grad_(False)  # the floor: backward to the input only
    x = torch.randn(shape.tokens, shape.width, device=settings.device, requires_grad=True)
    rows = []
    for name, (config_class, fields) in METHODS.items():
        kit, ref = pair(base, config_class, fields)
        agree = close(kit(x), ref(x))
        models = {PEFTKIT: kit, PEFT: ref, FLOOR: base}
        times = interleaved(settings, {n: Case(run=square_loss_step(m, x)) for n, m in models.items()})
        memory = {}
        for n, m in models.items():
            recorder = SavedActivations(m)
            with recorder.recording():
                m(x)
            memory[n] = recorder.mib
        what = f"{shape.layers} x Linear({shape.width}), {shape.tokens} tokens, all layers adapted"
        rows.append(times.row(f"{name}: train step", agree, what))
        rows.append(Row(f"{name}: saved activations", "MiB", memory[PEFTKIT], memory[PEFT], memory[FLOOR], note=what))
    return rows
