"""A 70B-shaped Llama on the meta device (no weights at all): LoRA injection, and loading a saved adapter with
``low_cpu_mem_usage=True`` (the adapter's tensors are assigned from the file: the only real memory), peftkit vs
the reference peft. Time on the chosen clock; peak resident memory (RSS high-water mark, MiB above the level
before the call, Linux ``/proc/self/clear_refs``) in a fresh process per library, so that memory freed by an
earlier run cannot hide a peak.

Floors: injection allocates nothing on meta (no floor shown); loading must at least read the adapter file
(``safetensors.load_file``), and its memory floor is the file's size.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import peft
import torch
from safetensors.torch import load_file

import peftkit
from benchmarks.harness import FLOOR, PEFT, PEFTKIT, Case, Row, Settings, interleaved
from benchmarks.models import TINY, Shape, build_model_fast, kit_config, peft_config

LLAMA_70B = Shape(layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=32000)
SHAPES = {"full": LLAMA_70B, "quick": LLAMA_70B, "tiny": TINY}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def peak_rss_mib(call: Callable[[], Any]) -> float:
    """MiB by which the process's resident set peaked above its level before ``call`` (Linux only; ``nan``
    elsewhere). The result of ``call`` is kept alive until after the reading."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _status_kib("VmRSS")
    result = call()
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) / 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def fresh_peak_mib(library: str, what: str, preset: str, directory: str = "") -> float:
    """:func:`peak_rss_mib` of ``what`` (``inject`` / ``load``) for ``library``, measured in a new process."""
    command = [sys.executable, "-m", "benchmarks.scale", library, what, preset, directory]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def _inject(library: str, shape: Shape) -> Callable[[], Any]:
    def run() -> Any:
        base = build_model_fast(shape, device="meta")
        if library == PEFTKIT:
            return peftkit.get_peft_model(base, kit_config(**LORA))
        return peft.get_peft_model(base, peft_config(**LORA))

    return run


def _load(library: str, shape: Shape, directory: str) -> Callable[[], Any]:
    def run() -> Any:
        base = build_model_fast(shape, device="meta")
        cls = peftkit.PeftModel if library == PEFTKIT else peft.PeftModel
        return cls.from_pretrained(base, directory, low_cpu_mem_usage=True)

    return run


def _write_adapter(shape: Shape, directory: str) -> int:
    """Save an adapter for ``shape`` (random values handed in as the state dict) and return the file's bytes."""
    model = peftkit.get_peft_model(build_model_fast(shape, device="meta"), kit_config(**LORA))
    generator = torch.Generator().manual_seed(0)
    values = {n: torch.randn(p.shape, generator=generator) * 0.01 for n, p in model.named_parameters() if "lora_" in n}
    model.save_pretrained(directory, state_dict=values)
    return os.path.getsize(os.path.join(directory, "adapter_model.safetensors"))


def _agree(shape: Shape, directory: str) -> tuple[bool, int]:
    """Whether peftkit holds exactly the file's values (nothing left on meta), and how many LoRA tensors the
    reference leaves on meta."""
    stored = load_file(os.path.join(directory, "adapter_model.safetensors"))
    kit, ref = _load(PEFTKIT, shape, directory)(), _load(PEFT, shape, directory)()
    kit_state = peftkit.get_peft_model_state_dict(kit)
    ref_on_meta = sum(p.is_meta for n, p in ref.named_parameters() if "lora_" in n)
    exact = kit_state.keys() == stored.keys() and all(
        not kit_state[k].is_meta and torch.equal(kit_state[k], v) for k, v in stored.items()
    )
    return exact, ref_on_meta


def run(settings: Settings) -> list[Row]:
    shape = SHAPES[settings.preset]
    reps = 1 if settings.preset == "tiny" else 3
    params = sum(p.numel() for p in build_model_fast(shape, device="meta").parameters()) / 1e9
    note = f"{params:.1f}B-parameter Llama shape on meta, r=8 on q_proj/v_proj"
    inject = interleaved(settings, {PEFTKIT: Case(_inject(PEFTKIT, shape)), PEFT: Case(_inject(PEFT, shape))}, reps)
    rows = [Row("70B meta: LoRA injection", "ms", inject[PEFTKIT], inject[PEFT], None, None, None, note)]
    memory = [fresh_peak_mib(lib, "inject", settings.preset) for lib in (PEFTKIT, PEFT)]
    rows.append(Row("70B meta: injection peak RSS", "MiB", *memory, None, None, None, note))
    with tempfile.TemporaryDirectory() as directory:
        size = _write_adapter(shape, directory)
        gc.collect()
        path = os.path.join(directory, "adapter_model.safetensors")
        cases = {lib: Case(_load(lib, shape, directory)) for lib in (PEFTKIT, PEFT)}
        cases[FLOOR] = Case(lambda: load_file(path))
        load = interleaved(settings, cases, reps)
        agree, ref_on_meta = _agree(shape, directory)
        memory = [fresh_peak_mib(lib, "load", settings.preset, directory) for lib in (PEFTKIT, PEFT)]
    note = f"{note}; adapter file {size / 2**20:.0f} MiB; peft leaves {ref_on_meta} LoRA tensors on meta"
    samples = load.triple(PEFTKIT, PEFT, FLOOR)
    rows.append(Row("70B meta: load adapter, low_cpu_mem_usage", "ms", *(load[k] for k in samples), None, agree, note))
    rows.append(Row("70B meta: load peak RSS", "MiB", *memory, size / 2**20, None, agree, note))
    return rows


if __name__ == "__main__":  # one memory measurement in a fresh process (see fresh_peak_mib)
    library, what, preset, directory = sys.argv[1:5]
    shape = SHAPES[preset]
    call = _inject(library, shape) if what == "inject" else _load(library, shape, directory)
    peak_rss_mib(_inject(library, TINY))  # warm-up: imports and first-call allocations are not the figure
    print(peak_rss_mib(call))
