"""Recompilations under ``torch.compile`` after ``set_adapter``, a hot-swap, and new mixes of adapters in a
mixed batch. Floor: 0.

Each library follows its documented recipe for serving: the adapters are held for inference
(``set_adapter(name, inference_mode=True)``: switching does not flip ``requires_grad``, which any compiled
graph guards on), ``prepare_model_for_compiled_hotswap``, compile the whole PeftModel, run once; then count
dynamo's own "Recompiling function ..." records (a guard failed and a frame is traced again, whether or not
the new trace holds a graph) for each event; the backend only counts, so no Inductor time is spent.
The first mixed-batch call is a new code path and compiles once; the count is of the mixes after it.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import peft.utils.hotswap
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounter

import peftkit.hotswap
from benchmarks.harness import PEFT, PEFTKIT, Row, Settings, close
from benchmarks.loading import save_random_adapters
from benchmarks.models import SMALL, TINY, Shape, adapter_pair, add_adapters, build_model, lora_kwargs, shrink


@dataclass(frozen=True)
class CompileShape:
    model: Shape


PRESETS = {
    "full": CompileShape(shrink(SMALL, layers=2, vocab=1024)),
    "quick": CompileShape(shrink(SMALL, layers=2, vocab=1024)),
    "tiny": CompileShape(shrink(TINY, layers=1)),
}
EVENTS = ("set_adapter", "hot-swap", "new adapter mix")


class RecompileLog(logging.Handler):
    """Counts dynamo's recompile records (its ``recompiles`` log artifact), silently."""

    NAME = "torch._dynamo.guards.__recompiles"

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Recompiling function" in record.getMessage():
            self.count += 1

    def __enter__(self) -> RecompileLog:
        torch._logging.set_logs(recompiles=True)
        logger = logging.getLogger(self.NAME)
        logger.addHandler(self)
        self._propagate, logger.propagate = logger.propagate, False
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self.NAME)
        logger.removeHandler(self)
        logger.propagate = self._propagate
        torch._logging.set_logs()


RECOMPILES = RecompileLog()


def traced_frames() -> int:
    """How many recompiles dynamo has logged so far while :data:`RECOMPILES` is active."""
    return RECOMPILES.count


class Session:
    """One library's compiled model and its compile counter."""

    def __init__(self, model: nn.Module, hotswap: ModuleType, dirs: list[Path], ids: torch.Tensor) -> None:
        self.model, self.hotswap, self.dirs, self.ids = model, hotswap, dirs, ids
        model.set_adapter("default", inference_mode=True)  # type: ignore[operator]
        hotswap.prepare_model_for_compiled_hotswap(model, target_rank=16)  # type: ignore[attr-defined]
        self.counter = CompileCounter()
        self.compiled = torch.compile(model, backend=self.counter)
        self.outputs: list[torch.Tensor] = []

    def forward(self, names: list[str] | None = None) -> None:
        with torch.no_grad():
            kwargs = {} if names is None else {"adapter_names": names}
            self.outputs.append(self.compiled(input_ids=self.ids, **kwargs).logits)

    def count(self, event: str, batch: int, steps: int = 2) -> int:
        """Run ``event`` ``steps`` times (each followed by a forward); return the frames compiled meanwhile."""
        if event == "new adapter mix":
            self.forward(["default", "other"] * (batch // 2))  # first mixed call: a new code path
        before = traced_frames()
        for step in range(steps):
            if event == "set_adapter":
                self.model.set_adapter(["other", "default"][step], inference_mode=True)  # type: ignore[operator]
                self.forward()
            elif event == "hot-swap":
                self.hotswap.hotswap_adapter(self.model, str(self.dirs[1 - step]), adapter_name="default")
                self.forward()
            else:
                mix = [["other", "default", "third", "default"], ["third", "third", "__base__", "other"]][step]
                self.forward(mix[:batch])
        return traced_frames() - before


def run(settings: Settings) -> list[Row]:
    shape = PRESETS[settings.preset]
    base = build_model(shape.model, device=settings.device)
    ids = torch.randint(0, shape.model.vocab, (4, 8), generator=torch.Generator().manual_seed(0)).to(settings.device)
    counts: dict[str, dict[str, int]] = {PEFTKIT: {}, PEFT: {}}
    steps = 1 if settings.preset == "tiny" else 2
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        dirs = list(save_random_adapters(base, Path(tmp), ["first", "second"]).values())
        kit, ref = adapter_pair(base, **lora_kwargs())
        add_adapters(kit, ref, ["other", "third"], **lora_kwargs())
        kit.eval(), ref.eval()
        sessions = {
            PEFTKIT: Session(kit, peftkit.hotswap, dirs, ids),
            PEFT: Session(ref, peft.utils.hotswap, dirs, ids),
        }
        with RECOMPILES:
            for name, session in sessions.items():
                torch._dynamo.reset()
                session.forward()
                for event in EVENTS:
                    counts[name][event] = session.count(event, ids.shape[0], steps)
        torch._dynamo.reset()
    outs = [sessions[n].outputs for n in (PEFTKIT, PEFT)]
    agree = len(outs[0]) == len(outs[1]) and all(close(a, b) for a, b in zip(*outs))
    what = f"{shape.model.describe()}; whole PeftModel compiled; each event {steps}x"
    return [
        Row(f"recompiles: {event}", "count", counts[PEFTKIT][event], counts[PEFT][event], 0, 0, agree, what)
        for event in EVENTS
    ]
