"""QLoRA training step: a LoRA step on a 4-bit (NF4, bitsandbytes) base next to the same step on bfloat16 and
float32 bases, peftkit and the reference side by side.

For each base precision: the time of one forward + loss + backward (as ``train_step``), and the training-step
memory. On a CUDA device the memory is the peak allocated during the step (``torch.cuda.max_memory_allocated``,
model included); on the CPU, where torch keeps no allocator statistics, it is the model's bytes (quantized
storage as stored) plus the distinct activation storages autograd saves for backward: the two terms that
quantization and the adapter implementation change. Floor: the same base frozen, with the embedding output
requiring grad (backward through every layer, no weight gradients).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, interleaved
from benchmarks.models import adapter_pair, build_model, lora_kwargs, lora_parameters
from benchmarks.train_step import PRESETS, activation_mib, frozen_floor, preset_batch, step, zero_grads

#: Relative tolerance of the loss and gradient comparison per base precision (bfloat16 rounds at 2^-8, and the two
#: libraries round at different points: measured 2.5% of the largest gradient entry on the quick shape).
RTOL = {"float32": 1e-4, "bfloat16": 5e-2, "4-bit nf4": 1e-4}


def near(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    """``max |a - b| <= rtol * max |b|``."""
    return bool((a.float() - b.float()).abs().max() <= rtol * b.float().abs().max())


def agreement(kit: nn.Module, ref: nn.Module, ids: torch.Tensor, rtol: float) -> bool:
    """Same loss and the same gradient for every LoRA tensor (dropout 0), within ``rtol`` of the largest entry."""
    same = near(step(kit, ids), step(ref, ids), rtol)
    grads_kit, grads_ref = lora_parameters(kit), lora_parameters(ref)
    same = same and all(near(grads_kit[n].grad, p.grad, rtol) for n, p in grads_ref.items())
    zero_grads(kit), zero_grads(ref)
    return same


def model_mib(model: nn.Module) -> float:
    """MiB of the model's parameters and buffers as stored (4-bit weights count their packed bytes)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def step_memory(model: nn.Module, ids: torch.Tensor, device: str) -> float:
    """Peak MiB of one training step on CUDA; model + saved activations on the CPU (see the module doc)."""
    if not device.startswith("cuda"):
        return model_mib(model) + activation_mib(model, ids)
    zero_grads(model)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step(model, ids)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20
    zero_grads(model)
    return peak


def bases(settings: Settings, directory: str) -> dict[str, Callable[[], nn.Module]]:
    """Base precision -> a builder of that base (the same float32 weights in each)."""
    shape = PRESETS[settings.preset].model
    build_model(shape, device="cpu").save_pretrained(directory)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return {
        "float32": lambda: AutoModelForCausalLM.from_pretrained(directory, device_map=settings.device),
        "bfloat16": lambda: AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.bfloat16, device_map=settings.device
        ),
        "4-bit nf4": lambda: AutoModelForCausalLM.from_pretrained(
            directory, quantization_config=nf4, device_map=settings.device
        ),
    }


def run(settings: Settings) -> list[Row]:
    shape, ids = preset_batch(settings)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        for precision, build in bases(settings, directory).items():
            base = build()
            kit, ref = adapter_pair(base, **lora_kwargs())
            floor = frozen_floor(base)
            models = {PEFTKIT: kit.train(), PEFT: ref.train(), FLOOR: floor.train()}
            agree = agreement(kit, ref, ids, RTOL[precision])
            cases = {
                n: Case(run=lambda m=m: step(m, ids), prepare=lambda m=m: zero_grads(m)) for n, m in models.items()
            }
            times = interleaved(settings, cases, reps=settings.reps)
            memory = {n: step_memory(m, ids, settings.device) for n, m in models.items()}
            what = f"{shape.model.describe()}; batch {shape.batch} x {shape.seq}; r=16 all-linear; {precision} base"
            rows.append(times.row(f"QLoRA train step, {precision} base", agree, what))
            memory_note = "peak allocated" if settings.device.startswith("cuda") else "model bytes + saved activations"
            rows.append(
                Row(
                    f"QLoRA step memory, {precision} base",
                    "MiB",
                    memory[PEFTKIT],
                    memory[PEFT],
                    memory[FLOOR],
                    None,
                    agree,
                    memory_note,
                )
            )
    return rows
