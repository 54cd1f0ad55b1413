"""LoRA training step: time of forward + loss + backward, and the activation memory autograd keeps.

Floor: the same model with every weight frozen and the embedding output requiring grad, so that backward
runs through the whole network (activation gradients only, no weight gradients) — the least work any
adapter method that trains inside the first layer must do. The optimizer step is left out (it is the same
for both libraries and tiny: the adapters have <2% of the parameters).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, SavedActivations, Settings, close, interleaved
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, build_model, lora_kwargs


@dataclass(frozen=True)
class TrainShape:
    model: Shape
    batch: int
    seq: int


PRESETS = {
    "full": TrainShape(SMALL, batch=4, seq=128),
    "quick": TrainShape(SMALL, batch=2, seq=64),
    "tiny": TrainShape(TINY, batch=2, seq=8),
}


DROPOUTS = (0.0, 0.05)


def frozen_floor(base: nn.Module) -> nn.Module:
    """A copy of ``base`` with frozen weights whose embedding output requires grad."""
    floor = copy.deepcopy(base)
    floor.requires_grad_(False)
    floor.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
    return floor


def step(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """One forward + loss + backward; returns the (detached) loss."""
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def zero_grads(model: nn.Module) -> None:
    for param in model.parameters():
        param.grad = None


def preset_batch(settings: Settings) -> tuple[TrainShape, torch.Tensor]:
    """The preset's shape and its fixed batch of token ids ``(batch, seq)`` (seed 0) on the settings' device."""
    shape = PRESETS[settings.preset]
    gen = torch.Generator().manual_seed(0)
    return shape, torch.randint(0, shape.model.vocab, (shape.batch, shape.seq), generator=gen).to(settings.device)


def same_loss_and_grads(kit: nn.Module, ref: nn.Module, ids: torch.Tensor) -> bool:
    """One step of each: the same loss and the same gradient for every trainable tensor of ``ref``; the
    gradients are cleared afterwards."""
    same = close(step(kit, ids), step(ref, ids))
    mine = dict(kit.named_parameters())
    theirs = {n: p for n, p in ref.named_parameters() if p.requires_grad}
    same = same and all(close(mine[n].grad, p.grad, rtol=1e-3, atol=1e-6) for n, p in theirs.items())
    zero_grads(kit), zero_grads(ref)
    return same


def activation_mib(model: nn.Module, ids: torch.Tensor) -> float:
    """MiB of distinct storages saved for backward by one forward (then backward frees them)."""
    recorder = SavedActivations(model)
    with recorder.recording():
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    zero_grads(model)
    return recorder.mib


def agreement(kit: nn.Module, ref: nn.Module, ids: torch.Tensor, dropout: float) -> bool:
    """Dropout 0: same loss and same gradient for every LoRA tensor. Dropout > 0 (random masks differ):
    same eval-mode logits and a train-mode loss within 1%."""
    if dropout == 0:
        return same_loss_and_grads(kit, ref, ids)
    torch.manual_seed(0)
    loss_kit, loss_ref = step(kit, ids), step(ref, ids)
    same = bool(abs(loss_kit - loss_ref) <= 0.01 * abs(loss_ref))
    kit.eval(), ref.eval()
    with torch.no_grad():
        same = same and close(kit(input_ids=ids).logits, ref(input_ids=ids).logits)
    kit.train(), ref.train()
    zero_grads(kit), zero_grads(ref)
    return same


def run(settings: Settings) -> list[Row]:
    shape, ids = preset_batch(settings)
    base = build_model(shape.model, device=settings.device)
    floor = frozen_floor(base).train()
    what = f"{shape.model.describe()}; batch {shape.batch} x {shape.seq} tokens; r=16 all-linear"
    models: dict[str, nn.Module] = {FLOOR: floor}
    agree = {}
    for dropout in DROPOUTS:
        kit, ref = adapter_pair(base, **lora_kwargs(dropout=dropout))
        kit.train(), ref.train()
        agree[dropout] = agreement(kit, ref, ids, dropout)
        models[f"{PEFTKIT} {dropout}"], models[f"{PEFT} {dropout}"] = kit, ref
    cases = {name: Case(run=lambda m=m: step(m, ids), prepare=lambda m=m: zero_grads(m)) for name, m in models.items()}
    times = interleaved(settings, cases, reps=settings.reps * 2)  # the noisiest figure and the tightest target
    memory = {name: activation_mib(m, ids) for name, m in models.items()}
    rows: list[Row] = []
    for dropout in DROPOUTS:
        kit, ref = f"{PEFTKIT} {dropout}", f"{PEFT} {dropout}"
        rows.append(times.row(f"train step, dropout {dropout:g}", agree[dropout], what, (kit, ref, FLOOR), 1.05))
        rows.append(
            Row(
                f"activation memory, dropout {dropout:g}",
                "MiB",
                memory[kit],
                memory[ref],
                memory[FLOOR],
                1.3 if dropout else None,
                agree[dropout],
                "distinct storages saved for backward (parameters excluded)",
            )
        )
    return rows
