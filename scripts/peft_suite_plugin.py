"""pytest plugin of ``scripts/peft_suite.py`` (loaded with ``-p peft_suite_plugin`` in every run it starts).

It does three things, each switched on by an environment variable that the runner sets:

- always: stands in for ``diffusers`` when it is not installed (PEFT's ``testing_common`` imports
  ``StableDiffusionPipeline`` only for an ``isinstance`` check; its diffusers tests are out of scope);
- ``PEFT_SUITE_SELECT=<json path>`` (collection run, on the reference): decides per collected test whether it
  is in scope, i.e. whether every adapter method it touches is one that peftkit implements
  (``PEFT_SUITE_METHODS``, comma-separated ``peft_type`` names) and every LoRA variant or initialisation it
  configures too (``PEFT_SUITE_VARIANTS``, PEFT's names as in ``peftkit.catalog.LORA_VARIANTS``), and writes both
  decisions (``method_in_scope``, ``in_scope``);
- ``PEFT_SUITE_ONLY=<text path>``: runs only the tests whose node ids it lists (one a line); a listed test
  that this side does not collect (its parameters differ) simply does not run, and is counted as not passed;
- ``PEFT_SUITE_RESULTS=<jsonl path>``: appends one line per finished test (outcome and the failure's short
  message), so that a run stopped by a timeout still leaves its results.
"""

from __future__ import annotations

import importlib.util
import inspect
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


def _test_function(item: pytest.Item) -> Any:
    """The test's own function, under any decorators that wrap it (``functools.wraps``); ``None`` without code."""
    function = getattr(item, "function", None)
    function = inspect.unwrap(function) if function is not None else None
    return function if hasattr(function, "__code__") else None


def _methods_touched(item: pytest.Item) -> set[str]:
    """Methods named by the test's parameters; without method parameters, by the globals its code reads."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    found = {m for value in params.values() for obj in _walk(value) if (m := _method_of(obj)) is not None}
    if found:
        return found
    function = _test_function(item)
    if function is None:
        return set()
    namespace = function.__globals__
    objs = (namespace[name] for name in set(_code_names(function.__code__)) if name in namespace)
    return {m for obj in objs if isinstance(obj, type) and (m := _method_of(obj)) is not None}


#: PEFT's LoRA variants and initialisations (in PEFT's terms separate methods built on LoRA), by the config field
#: that switches each on (a value that is set: not None, False or empty). peftkit declares the ones it implements in
#: ``peftkit.catalog.LORA_VARIANTS``, with these names.
VARIANT_FIELDS: dict[str, str] = {
    "use_dora": "dora",
    "alora_invocation_tokens": "alora",
    "use_qalora": "qalora",
    "velora_config": "velora",
    "use_bdlora": "bdlora",
    "monteclora_config": "monteclora",
    "kasa_config": "kasa",
    "arrow_config": "arrow",
    "lora_ga_config": "lora_ga",
    "corda_config": "corda",
    "eva_config": "eva",
    "loftq_config": "loftq",
    "layer_replication": "layer_replication",
    "megatron_config": "megatron",
    "target_parameters": "target_parameters",
    "trainable_token_indices": "trainable_tokens",
}
#: ``init_lora_weights`` strings that name a variant (``pissa_niter_N`` is ``pissa``).
INIT_VARIANTS = frozenset({"gaussian", "pissa", "olora", "orthogonal", "corda", "eva", "loftq", "mica", "lora_ga"})
#: PEFT classes and functions that configure or drive a variant: by name, and by the ``peft.tuners.lora`` /
#: ``peft.utils`` module that holds them.
VARIANT_NAMES: dict[str, str] = {
    "VeloraConfig": "velora",
    "BdLoraConfig": "bdlora",
    "KasaConfig": "kasa",
    "MontecloraConfig": "monteclora",
    "ArrowConfig": "arrow",
    "LoraGAConfig": "lora_ga",
    "EvaConfig": "eva",
    "CordaConfig": "corda",
    "LoftQConfig": "loftq",
}
VARIANT_MODULES: dict[str, str] = {
    "velora": "velora",
    "monteclora": "monteclora",
    "arrow": "arrow",
    "loraga": "lora_ga",
    "eva": "eva",
    "corda": "corda",
    "loftq_utils": "loftq",
}
VARIANTS = frozenset(VARIANT_FIELDS.values()) | INIT_VARIANTS


def _init_variant(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    name = "pissa" if value.lower().startswith("pissa_niter_") else value.lower()
    return name if name in INIT_VARIANTS else None


def variants_of_fields(fields: dict[str, Any]) -> set[str]:
    """The variants a config's fields (or a dict of config keyword arguments) switch on."""
    found = {variant for key, variant in VARIANT_FIELDS.items() if fields.get(key) not in (None, False, {}, [], "")}
    init = _init_variant(fields.get("init_lora_weights"))
    return found | ({init} if init else set())


def _variant_of(obj: Any) -> set[str]:
    """Variants an object names: a config (its fields), a dict of config arguments, a variant's class/function."""
    if isinstance(obj, dict):
        return variants_of_fields(obj) if all(isinstance(k, str) for k in obj) else set()
    if hasattr(obj, "peft_type") and not isinstance(obj, type):
        return variants_of_fields(vars(obj))
    if not (isinstance(obj, type) or callable(obj)):
        return set()
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith("peft."):
        return set()
    named = VARIANT_NAMES.get(getattr(obj, "__name__", ""))
    by_module = VARIANT_MODULES.get(module.rsplit(".", 1)[-1])
    return {v for v in (named, by_module) if v}


def _code_variants(code: types.CodeType) -> set[str]:
    """Variants named by a code object's constants: keyword names (``use_dora=...``) and init strings."""
    found: set[str] = set()
    for const in code.co_consts:
        strings = const if isinstance(const, tuple) else (const,)
        for value in strings:
            if isinstance(value, str):
                found |= {VARIANT_FIELDS[value]} if value in VARIANT_FIELDS else set()
                found |= {init} if (init := _init_variant(value)) else set()
            elif isinstance(value, types.CodeType):
                found |= _code_variants(value)
    return found


def _functions_reached(item: pytest.Item, depth: int = 2) -> list[Any]:
    """The test function and the functions of its own test module (module level or its class) that its code
    names, ``depth`` calls deep (PEFT's own functions are not followed: their code is not the test's config)."""
    function = _test_function(item)
    if function is None:
        return []
    cls = getattr(item, "cls", None)
    reached, frontier = [function], [function]
    for _ in range(depth):
        names = {n for f in frontier for n in _code_names(f.__code__)}
        spaces = [function.__globals__, vars(cls) if cls is not None else {}]
        found = [getattr(space[n], "__func__", space[n]) for n in names for space in spaces if n in space]
        frontier = [
            f for f in found if hasattr(f, "__code__") and f.__module__ == function.__module__ and f not in reached
        ]
        reached += frontier
    return reached


def _variants_touched(item: pytest.Item) -> set[str]:
    """LoRA variants the test configures: those its parameters name (config objects, dicts of config arguments);
    unless its parameters name a method, also those its code (and the functions it calls) names: the variant
    classes and functions it reads, the keywords and init strings it uses."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    objs = [obj for value in params.values() for obj in _walk(value)]
    found = {v for obj in objs for v in _variant_of(obj)}  # e.g. a parameter {"init_lora_weights": "eva"}
    if any(_method_of(obj) is not None for obj in objs):
        return found
    for function in _functions_reached(item):
        namespace = function.__globals__
        found |= {v for n in _code_names(function.__code__) if n in namespace for v in _variant_of(namespace[n])}
        found |= _code_variants(function.__code__)
    return found


def _decide(item: pytest.Item, methods: set[str], variants: set[str] | None = None) -> tuple[bool, bool, str]:
    """``(in scope by method, in scope by method and LoRA variant, why not)``; ``variants=None``: not checked."""
    if GPU_MARKERS & {mark.name for mark in item.iter_markers()}:
        return False, False, "gpu"
    outside = sorted(_methods_touched(item) - methods)
    if outside:
        return False, False, "method:" + ",".join(outside)
    missing = sorted(_variants_touched(item) - variants) if variants is not None else []
    if missing:
        return True, False, "variant:" + ",".join(missing)
    return True, True, ""


@pytest.hookimpl(trylast=True)  # after ``-k`` / ``-m`` deselection, so that the decisions cover what runs
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
    declared = os.environ.get("PEFT_SUITE_VARIANTS")
    variants = set(filter(None, declared.split(","))) if declared is not None else None
    rows = []
    for item in items:
        by_method, in_scope, reason = _decide(item, methods, variants)
        rows.append({"nodeid": item.nodeid, "in_scope": in_scope, "method_in_scope": by_method, "reason": reason})
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
