"""Several threads using one model at once.

* Mixed batches: four threads, each with its own ``adapter_names`` mix, many calls each: every output equals
  the single-threaded output for that mix (the routing is per call, not stored on the shared layers).
* Changes concurrent with inference (``set_adapter``, ``load_adapter`` into a new and into an existing name,
  ``delete_adapter``, merge / unmerge, disabling): every forward sees the adapters as they were when it began,
  so its output equals the output of one of the states the model passes through, never a mixture of them.
* A change requested from inside a forward of the same model raises ``ConcurrencyError`` (it could not wait).
Covers ``PeftModelForCausalLM`` and a transformers model with peftkit's in-place adapter methods.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from tests.integration._transformers_fixtures import VOCAB, lora, tiny_llama

import peftkit

MIXES = [["a", "b", "__base__", "a"], ["b", "b", "a", "__base__"], ["__base__", "a", "b", "b"], ["a", "a", "a", "b"]]
ROUNDS = 15


def build(style: str):
    torch.manual_seed(0)
    if style == "PeftModel":
        model = peftkit.get_peft_model(tiny_llama(), lora(alpha=32, task_type="CAUSAL_LM"), adapter_name="a")
        model.add_adapter("b", lora(alpha=32, task_type="CAUSAL_LM"))
    else:
        model = peftkit.enable_adapter_methods(tiny_llama())
        model.add_adapter(lora(alpha=32), adapter_name="a")
        model.add_adapter(lora(alpha=32), adapter_name="b")
    return model.eval()


def run_threads(targets) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(target):
        def run():
            try:
                target()
            except BaseException as exc:  # reported to the test thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("style", ["PeftModel", "in-place"])
def test_mixed_batches_in_four_threads_equal_single_threaded(style: str) -> None:
    model = build(style)
    ids = torch.randint(3, VOCAB, (4, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = [model(input_ids=ids, adapter_names=mix).logits for mix in MIXES]
    assert all(not torch.allclose(expected[0], e) for e in expected[1:])
    wrong: list[tuple[int, int]] = []

    def worker(i: int):
        def run():
            with torch.no_grad():
                for step in range(ROUNDS):
                    got = model(input_ids=ids, adapter_names=MIXES[i]).logits
                    if not torch.allclose(got, expected[i], rtol=1e-6, atol=1e-6):
                        wrong.append((i, step))

        return run

    assert run_threads([worker(i) for i in range(len(MIXES))]) == []
    assert wrong == [], f"{len(wrong)} of {ROUNDS * len(MIXES)} outputs wrong"


def changes(style: str, model, directory) -> list:
    """Functions that change the adapter state and back; each leaves the model in a state whose output is known."""
    if style == "PeftModel":
        disable, enable = model.base_model.disable_adapter_layers, model.base_model.enable_adapter_layers
        merge, unmerge = model.merge_adapter, model.unmerge_adapter
    else:
        disable, enable = model.disable_adapters, model.enable_adapters
        merge = unmerge = None

    def load_new():
        model.load_adapter(directory, adapter_name="c")
        model.delete_adapter("c")

    steps = [lambda: model.set_adapter("b"), lambda: model.set_adapter("a"), disable, enable, load_new]
    if style == "PeftModel":
        steps += [merge, unmerge, lambda: model.load_adapter(directory, adapter_name="a")]
    return steps


@pytest.mark.parametrize("style", ["PeftModel", "in-place"])
def test_changes_during_inference_are_never_seen_half_done(style: str, tmp_path) -> None:
    model = build(style)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    model.set_adapter("a")
    model.save_pretrained(tmp_path, selected_adapters=["a"])  # into tmp_path/a (PEFT's layout)
    directory = tmp_path / "a"
    with torch.no_grad():
        outputs = {}
        for name in ("a", "b"):
            model.set_adapter(name)
            outputs[name] = model(input_ids=ids).logits
        model.set_adapter("a")
        outputs["base"] = torch.zeros(0)
    with torch.no_grad(), model.disable_adapter() if style == "PeftModel" else _disabled(model):
        outputs["base"] = model(input_ids=ids).logits
    steps = changes(style, model, directory)
    seen: list[torch.Tensor] = []
    done = threading.Event()

    def infer():
        with torch.no_grad():
            while not done.is_set():
                seen.append(model(input_ids=ids).logits)

    def change():
        try:
            for _ in range(4):
                for step in steps:
                    step()
                    time.sleep(0.002)  # changes queue ahead of forwards; let some forwards in between
        finally:
            done.set()

    assert run_threads([infer, infer, change]) == []
    assert len(seen) > 10
    for out in seen:
        assert any(torch.allclose(out, o, rtol=1e-4, atol=1e-4) for o in outputs.values()), "a half-done change"


class _disabled:
    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.model.disable_adapters()

    def __exit__(self, *exc: object) -> None:
        self.model.enable_adapters()


@pytest.mark.parametrize("style", ["PeftModel", "in-place"])
def test_a_change_from_inside_a_forward_raises(style: str) -> None:
    model = build(style)
    inner = model.get_base_model() if style == "PeftModel" else model
    caught: list[BaseException] = []

    def hook(module, args):
        try:
            model.set_adapter("b")
        except peftkit.ConcurrencyError as exc:
            caught.append(exc)

    handle = inner.model.layers[0].register_forward_pre_hook(hook)
    with torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (1, 4)))
    handle.remove()
    assert len(caught) == 1 and "inside a forward" in str(caught[0])


def test_compiled_model_routes_each_call_in_each_thread() -> None:
    """torch.compile must guard on the per-thread routing: a graph traced for a plain call (in a thread that
    never routed before) is not reused for a mixed batch, and a mixed graph not for another thread's plain call."""
    model = build("PeftModel")
    ids = torch.randint(3, VOCAB, (4, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = {"plain": model(input_ids=ids).logits}
        expected.update({i: model(input_ids=ids, adapter_names=mix).logits for i, mix in enumerate(MIXES[:2])})
    compiled = torch.compile(model, backend="eager")
    got: dict[object, torch.Tensor] = {}

    def fresh_thread(thread: int, keys: list[object]):
        def run():
            with torch.no_grad():
                for key in keys:
                    names = None if key == "plain" else MIXES[key]  # type: ignore[index]
                    got[(thread, key)] = compiled(input_ids=ids, adapter_names=names).logits

        return run

    assert run_threads([fresh_thread(1, ["plain", 0, 1])]) == []
    assert run_threads([fresh_thread(2, [0, "plain"])]) == []
    torch._dynamo.reset()
    assert len(got) == 5
    for (_, key), logits in got.items():
        torch.testing.assert_close(logits, expected[key], rtol=1e-5, atol=1e-5)
