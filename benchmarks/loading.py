"""Adapter loading latency: ``PeftModel.load_adapter`` of a second adapter, and an in-place hot-swap of the
active adapter (``hotswap_adapter``), both from a PEFT-format directory on disk (in the page cache).

Floor: ``safetensors.torch.load_file`` of the adapter file plus ``copy_`` of every tensor into preallocated
tensors of the right shapes — the bytes have to be read and put somewhere, nothing else is necessary.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import peft
import peft.utils.hotswap
import torch
from safetensors.torch import load_file
from torch import nn

import peftkit.hotswap
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, close, interleaved
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, build_model, lora_kwargs, randomize_lora


@dataclass(frozen=True)
class LoadShape:
    model: Shape


PRESETS = {"full": LoadShape(SMALL), "quick": LoadShape(SMALL), "tiny": LoadShape(TINY)}


class CopyFloor:
    """Read the file and copy each tensor into a preallocated tensor of the same shape."""

    def __init__(self, path: Path, device: str) -> None:
        self.path, self.device = str(path), device
        self.slots = {k: torch.empty_like(v, device=device) for k, v in load_file(self.path).items()}

    def run(self) -> None:
        with torch.no_grad():
            for key, value in load_file(self.path, device=self.device).items():
                self.slots[key].copy_(value)


def save_random_adapters(base: nn.Module, root: Path, names: list[str]) -> dict[str, Path]:
    """Save adapters with different random weights (same config) in PEFT's format, written by peft."""
    dirs = {}
    for seed, name in enumerate(names):
        model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type="CAUSAL_LM", **lora_kwargs()))
        randomize_lora(model, seed=10 + seed)
        model.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def load_row(settings: Settings, kit: nn.Module, ref: nn.Module, path: Path, ids: torch.Tensor) -> Row:
    def load(model: nn.Module) -> None:
        model.load_adapter(str(path), adapter_name="other")

    def unload(model: nn.Module) -> None:
        model.delete_adapter("other")

    load(kit), load(ref)
    kit.set_adapter("other"), ref.set_adapter("other")
    agree = close(_logits(kit, ids), _logits(ref, ids))
    kit.set_adapter("default"), ref.set_adapter("default")
    unload(kit), unload(ref)
    cases = {
        PEFTKIT: Case(run=lambda: load(kit), cleanup=lambda: unload(kit)),
        PEFT: Case(run=lambda: load(ref), cleanup=lambda: unload(ref)),
        FLOOR: Case(run=CopyFloor(path / "adapter_model.safetensors", settings.device).run),
    }
    times = interleaved(settings, cases)
    samples = times.triple(PEFTKIT, PEFT, FLOOR)
    return Row("load_adapter", "ms", *(times[k] for k in samples), 3.0, agree, "second adapter, r=16", samples=samples)


def hotswap_row(settings: Settings, kit: nn.Module, ref: nn.Module, dirs: list[Path], ids: torch.Tensor) -> Row:
    turn = {PEFTKIT: 0, PEFT: 0}

    def swap(name: str, module: object, model: nn.Module) -> None:
        turn[name] += 1
        module.hotswap_adapter(model, str(dirs[turn[name] % 2]), adapter_name="default")  # type: ignore[attr-defined]

    swap(PEFTKIT, peftkit.hotswap, kit), swap(PEFT, peft.utils.hotswap, ref)
    agree = close(_logits(kit, ids), _logits(ref, ids))
    cases = {
        PEFTKIT: Case(run=lambda: swap(PEFTKIT, peftkit.hotswap, kit)),
        PEFT: Case(run=lambda: swap(PEFT, peft.utils.hotswap, ref)),
        FLOOR: Case(run=CopyFloor(dirs[0] / "adapter_model.safetensors", settings.device).run),
    }
    times = interleaved(settings, cases)
    samples = times.triple(PEFTKIT, PEFT, FLOOR)
    return Row("hot-swap", "ms", *(times[k] for k in samples), 1.5, agree, "same config, new weights", samples=samples)


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    ids = torch.randint(0, shape.model.vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(settings.device)
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        dirs = save_random_adapters(base, Path(tmp), ["first", "second"])
        kit, ref = adapter_pair(base, **lora_kwargs())
        kit.eval(), ref.eval()
        what = f"{shape.model.describe()}; r=16 all-linear"
        load = load_row(settings, kit, ref, dirs["first"], ids)
        swap = hotswap_row(settings, kit, ref, [dirs["first"], dirs["second"]], ids)
        for row in (load, swap):
            row.note = f"{row.note}; {what}"
        return [load, swap]
