"""VeLoRA (``LoraConfig(velora_config=...)``): the activations a training step saves for backward, and its time, on
a stack of Linear layers, against the reference's VeLoRA and against plain LoRA.

VeLoRA keeps each adapted layer's input for ``lora_A``'s gradient as ``num_groups`` numbers per token instead of
``in`` (see ``peftkit.methods.lora.variants.velora_math``); with dropout, peftkit draws the mask again from a seed in
backward where the reference keeps it. Floor: the bare stack's forward + backward to its
input (what any adapter adds comes on top of it).
"""

from __future__ import annotations

import copy

import peft
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

PRESETS = {"full": StackShape(1024, 4, 512), "quick": StackShape(512, 4, 256), "tiny": StackShape(32, 2, 8)}
NUM_GROUPS = 32


def pair(base: nn.Module, velora: bool, dropout: float) -> tuple[nn.Module, nn.Module]:
    """``(peftkit model, peft model)`` with the same random adapter (r = 16) on every layer, in training mode."""
    targets = [str(i) for i in range(len(base))]
    fields = {"r": 16, "target_modules": targets, "init_lora_weights": False, "lora_dropout": dropout}
    models = []
    for lib in (peftkit, peft):
        extra = {"velora_config": lib.VeloraConfig(num_groups=NUM_GROUPS, init_type="batch_average")} if velora else {}
        models.append(lib.get_peft_model(copy.deepcopy(base), lib.LoraConfig(**fields, **extra)).train())
    kit, ref = models
    kit.load_state_dict({k: v for k, v in ref.state_dict().items() if "lora_" in k}, strict=False)
    return kit, ref


def saved_mib(model: nn.Module, x: torch.Tensor) -> float:
    recorder = SavedActivations(model)
    with recorder.recording():
        model(x)
    return recorder.mib


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = linear_stack(shape, settings.device)
    base.requires_grad_(False)
    x = torch.randn(shape.tokens, shape.width, device=settings.device, requires_grad=True)
    what = f"{shape.layers} x Linear({shape.width}), {shape.tokens} tokens, r=16, all layers adapted"
    rows = []
    for velora, dropout in ((True, 0.0), (True, 0.1), (False, 0.0), (False, 0.1)):
        name = f"VeLoRA (num_groups={NUM_GROUPS})" if velora else "LoRA (no VeLoRA)"
        name += f", dropout {dropout}"
        kit, ref = pair(base, velora, dropout)
        with torch.no_grad():  # eval mode: the dropout masks of the two libraries differ
            agree = close(kit.eval()(x), ref.eval()(x))
        kit.train(), ref.train()
        models = {PEFTKIT: kit, PEFT: ref, FLOOR: base}
        memory = {n: saved_mib(m, x) for n, m in models.items()}
        rows.append(Row(f"{name}: saved activations", "MiB", memory[PEFTKIT], memory[PEFT], memory[FLOOR], note=what))
        if velora and dropout == 0:
            times = interleaved(settings, {n: Case(run=square_loss_step(m, x)) for n, m in models.items()})
            rows.append(times.row(f"{name}: train step", agree, what))
    return rows
