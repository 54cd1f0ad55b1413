"""Cost of thread-safe inference (issue 10, item 3) on a one-token decode: the model's readers-writer lock
taken once per call, and the per-thread routing read by every adapter layer (``CALL_STATE.routing``, which
replaced a plain attribute of the layer).

The lock's cost is measured by toggling it in one process (interleaved rounds, CPU time, medians of the
per-round ratios); the routing read, which cannot be toggled, by ``timeit`` against the plain attribute read
it replaced, times the number of adapter layers, as a share of the decode time.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.call_state`` (about a minute).
"""

from __future__ import annotations

import statistics
import time
import timeit
from typing import Any

import torch

import peftkit
from benchmarks.forward import Decoder
from benchmarks.models import SMALL, build_model, kit_config, lora_kwargs
from peftkit.functional import iter_adapter_modules
from peftkit.layers.base import CALL_STATE
from peftkit.locking import ModelLock
from peftkit.methods.prompt.cache import cache_argument

ROUNDS, CALLS = 30, 10


def decode_ms(decoder: Decoder) -> float:
    start = time.process_time()
    for _ in range(CALLS):
        decoder.decode()
        decoder.reset()
    return (time.process_time() - start) * 1e3 / CALLS


def main() -> None:
    torch.set_num_threads(1)
    model = peftkit.get_peft_model(build_model(SMALL), kit_config(**lora_kwargs())).eval()
    ids = torch.randint(0, SMALL.vocab, (1, 128), generator=torch.Generator().manual_seed(0))
    cache_key = cache_argument(model.get_base_model().forward)
    if cache_key is None:
        raise RuntimeError("the base model's forward takes no key/value cache; this decode measure needs one.")
    decoder = Decoder(model, ids, cache_key)
    real: dict[str, Any] = {n: getattr(ModelLock, n) for n in ("acquire_shared", "release_shared")}
    ratios, with_lock = [], []
    for _ in range(ROUNDS + 1):
        locked = decode_ms(decoder)
        for name in real:
            setattr(ModelLock, name, lambda self: None)
        unlocked = decode_ms(decoder)
        for name, function in real.items():
            setattr(ModelLock, name, function)
        ratios.append(locked / unlocked)
        with_lock.append(locked)
    ratio, decode = statistics.median(ratios[1:]), statistics.median(with_lock[1:])
    layers = sum(1 for _ in iter_adapter_modules(model.get_base_model()))
    holder = type("Layer", (), {})()
    holder.batch_routing = None
    n = 200_000
    per_read = (
        timeit.timeit(lambda: CALL_STATE.routing, number=n) - timeit.timeit(lambda: holder.batch_routing, number=n)
    ) / n
    share = max(per_read, 0.0) * layers / (decode / 1e3)
    print(f"decode (1 token, {SMALL.layers} layers, hidden {SMALL.hidden}): {decode:.2f} ms")
    print(f"lock taken per call: {ratio:.4f}x the decode without it (median of {ROUNDS} interleaved rounds)")
    print(f"per-thread routing read: +{per_read * 1e9:.1f} ns per layer x {layers} layers = {share:.3%} of a decode")


if __name__ == "__main__":
    main()
