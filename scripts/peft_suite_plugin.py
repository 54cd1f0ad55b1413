"""pytest plugin of ``scripts/peft_suite.py`` (loaded with ``-p peft_suite_plugin`` in every run it starts).

It does three things, each switched on by an environment variable that the runner sets:

- always: stands in for ``diffusers`` when it is not installed (PEFT's ``testing_common`` imports
  ``StableDiffusionPipeline`` only for an ``isinstance`` check; its diffusers tests are out of scope);
- ``PEFT_SUITE_SELECT=<json path>`` (collection run, on the reference): decides per collected test whether it
  is in scope, i.e. whether every adapter method it touches is one that peftkit implements
  (``PEFT_SUITE_METHODS``, comma-separated ``peft_type`` names), and writes the decisions;
- ``PEFT_SUITE_ONLY=<text path>``: runs only the tests whose node ids it lists (one a line); a listed test
  that this side does not collect (its parameters differ) simply does not run, and is counted as not passed;
- ``PEFT_SUITE_RESULTS=<jsonl path>``: appends one line per finished test (outcome and the failure's short
  message), so that a run stopped by a timeout still leaves its results.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest

GPU_MARKERS = {"single_gpu_tests", "multi_gpu_tests"}


class _NoDiffusers:
    """Any diffusers class: never instantiated by an in-scope test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("diffusers is not installed; peft_suite counts its tests out of scope")


def _diffusers_name(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return _NoDiffusers


def _stand_in_for_diffusers() -> None:
    if "diffusers" in sys.modules or importlib.util.find_spec("diffusers") is not None:
        return
    module = types.ModuleType("diffusers")
    module.__spec__ = ModuleSpec("diffusers", None)
    module.__version__ = "0.0"  # type: ignore[attr-defined]
    module.__getattr__ = _diffusers_name  # type: ignore[method-assign]
    sys.modules["diffusers"] = module


_stand_in_for_diffusers()


def _no_hub_retry_waits() -> None:
    """The machine is offline and the runner points ``HF_ENDPOINT`` at a port that refuses: hub requests fail at
    once, but huggingface_hub's retry loop would still sleep 1+2+4+8+8 s per request. Skip the sleeps (only the
    hub-only tests, out of scope, make such requests)."""
    try:
        from huggingface_hub.utils import _http
    except ImportError:
        return
    _http.time = types.SimpleNamespace(sleep=lambda seconds: None)  # type: ignore[attr-defined]


if os.environ.get("HF_ENDPOINT", "").startswith("http://127.0.0.1:"):
    _no_hub_retry_waits()


def _method_of(obj: Any) -> str | None:
    """The ``peft_type`` an object belongs to (a config class or instance, or a class of ``peft.tuners.<x>``)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    if not isinstance(obj, type):
        obj = type(obj)
    for peft_type, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if obj is cls:
            return str(getattr(peft_type, "value", peft_type))
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("peft.tuners."):
        folder = module.split(".")[2]
        for peft_type, tuner in PEFT_TYPE_TO_TUNER_MAPPING.items():
            if tuner.__module__.split(".")[2] == folder:
                return str(getattr(peft_type, "value", peft_type))
    return None


def _walk(value: Any, depth: int = 0) -> Iterator[Any]:
    yield value
    if depth > 3:
        return
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _walk(item, depth + 1)


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _methods_touched(item: pytest.Item) -> set[str]:
    """Methods named by the test's parameters; without method parameters, by the globals its code reads."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    found = {m for value in params.values() for obj in _walk(value) if (m := _method_of(obj)) is not None}
    if found:
        return found
    function = getattr(item, "function", None)
    if function is None or not hasattr(function, "__code__"):
        return set()
    namespace = function.__globals__
    objs = (namespace[name] for name in set(_code_names(function.__code__)) if name in namespace)
    return {m for obj in objs if isinstance(obj, type) and (m := _method_of(obj)) is not None}


def _decide(item: pytest.Item, methods: set[str]) -> tuple[bool, str]:
    if GPU_MARKERS & {mark.name for mark in item.iter_markers()}:
        return False, "gpu"
    outside = sorted(_methods_touched(item) - methods)
    if outside:
        return False, "method:" + ",".join(outside)
    return True, ""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the listed tests (``PEFT_SUITE_ONLY``); write every scope decision (``PEFT_SUITE_SELECT``)."""
    only = os.environ.get("PEFT_SUITE_ONLY")
    if only:
        wanted = set(Path(only).read_text(encoding="utf-8").splitlines())
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
        items[:] = [item for item in items if item.nodeid in wanted]
    target = os.environ.get("PEFT_SUITE_SELECT")
    if not target:
        return
    methods = set(filter(None, os.environ.get("PEFT_SUITE_METHODS", "").split(",")))
    rows = []
    for item in items:
        in_scope, reason = _decide(item, methods)
        rows.append({"nodeid": item.nodeid, "in_scope": in_scope, "reason": reason})
    with open(target, "w", encoding="utf-8") as handle:
        json.dump(rows, handle)


def _short_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)[:500]
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        return str(report.longrepr[2])[:500]
    return str(report.longrepr)[-500:]


_IN_WORKER = False


def pytest_configure(config: pytest.Config) -> None:
    """Remember whether this process is a pytest-xdist worker (only the controller writes results)."""
    global _IN_WORKER
    _IN_WORKER = hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append the test's outcome once it is known: the first failing phase, or the call phase."""
    target = os.environ.get("PEFT_SUITE_RESULTS")
    if not target or _IN_WORKER:
        return
    if report.when != "call" and report.outcome == "passed":
        return
    row = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome}
    if report.outcome != "passed":
        row["message"] = _short_message(report)
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
