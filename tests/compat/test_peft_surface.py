"""PEFT's public surface in peftkit: every public name of the reference peft 0.21.2 at the paths users import
(``peft``, ``peft.utils``, ``peft.utils.hotswap``, ``peft.tuners.lora``, ``peft.tuners.tuners_utils``...) exists
at the same path under ``peftkit``, as the same kind of object, for the methods peftkit implements. Left out: the
names of methods peftkit lacks (by rule, from its registry) and the committed, reasoned exclusions of
``peft_surface_exclusions.py``. The objects are real equivalents: the isinstance checks PEFT code relies on
hold for peftkit's adapters.
"""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
import torch
from tests.compat.peft_surface_exclusions import EXCLUDED

from peftkit.registry import METHODS

peft = pytest.importorskip("peft")

#: The reference's modules whose public names users import.
PATHS = (
    "peft",
    "peft.auto",
    "peft.config",
    "peft.mapping",
    "peft.mapping_func",
    "peft.mixed_model",
    "peft.peft_model",
    "peft.tuners",
    "peft.tuners.tuners_utils",
    "peft.utils",
    "peft.utils.hotswap",
    "peft.utils.other",
    "peft.utils.peft_types",
    "peft.utils.save_and_load",
)
#: ``peft.tuners.<dir>`` of the methods peftkit implements (a method added to the catalog joins by itself).
METHOD_DIRS = tuple(t.value.lower() for t in METHODS)
_TABLE = re.compile(r"TRANSFORMERS_MODELS_TO_([A-Z0-9]+?)_(TARGET|FEEDFORWARD)_MODULES_MAPPING")


def method_paths() -> tuple[str, ...]:
    return tuple(f"peft.tuners.{d}" for d in METHOD_DIRS if importlib.util.find_spec(f"peft.tuners.{d}"))


def public_names(module_name: str) -> list[str]:
    """The module's ``__all__``, else the public names it defines itself."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items() if getattr(obj, "__module__", None) == module_name]
    return sorted(n for n in names if not n.startswith("_"))


def method_of_object(obj: object, name: str) -> str | None:
    """The ``peft.tuners.<dir>`` a name belongs to, if it belongs to one method."""
    table = _TABLE.fullmatch(name)
    if table:
        return next((t.value.lower() for t in peft.PeftType if t.value.replace("_", "") == table.group(1)), "?")
    parts = (getattr(obj, "__module__", None) or "").split(".")
    return parts[2] if parts[:2] == ["peft", "tuners"] and len(parts) > 2 and not parts[2].endswith("utils") else None


def in_scope() -> list[tuple[str, str]]:
    """``(module, name)`` pairs peftkit must offer."""
    pairs = []
    for module_name in PATHS + method_paths():
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            if name in EXCLUDED or f"{module_name}:{name}" in EXCLUDED:
                continue
            method = method_of_object(getattr(module, name), name)
            if method is not None and method not in METHOD_DIRS and method not in ("mixed",):
                continue  # a method peftkit does not implement
            pairs.append((module_name, name))
    return pairs


def _kind(obj: object) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "callable"
    if isinstance(obj, dict):
        return "dict"
    return "value"


def _required(fn: object) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]


def test_every_in_scope_name_exists_at_the_same_path_as_the_same_kind() -> None:
    missing, wrong = [], []
    for module_name, name in in_scope():
        ours_name = "peftkit" + module_name.removeprefix("peft")
        ours = importlib.import_module(ours_name)
        if not hasattr(ours, name):
            missing.append(f"{ours_name}.{name}")
            continue
        theirs_obj, ours_obj = getattr(importlib.import_module(module_name), name), getattr(ours, name)
        if _kind(theirs_obj) != _kind(ours_obj):
            wrong.append(f"{ours_name}.{name}: {_kind(ours_obj)}, reference: {_kind(theirs_obj)}")
        elif _kind(theirs_obj) == "callable" and _required(theirs_obj) != _required(ours_obj):
            wrong.append(f"{ours_name}.{name}{_required(ours_obj)}, reference{_required(theirs_obj)}")
    assert not missing, f"missing in peftkit: {missing}"
    assert not wrong, f"different: {wrong}"


def test_the_enumeration_covers_the_methods_and_paths() -> None:
    pairs = set(in_scope())
    for expected in [
        ("peft", "get_peft_config"),
        ("peft", "get_layer_status"),
        ("peft.utils.hotswap", "hotswap_adapter"),
        ("peft.tuners.tuners_utils", "BaseTunerLayer"),
        ("peft.tuners.lora", "LoraLayer"),
        ("peft.utils.save_and_load", "load_peft_weights"),
    ]:
        assert expected in pairs
    assert {"peft.tuners.lora", "peft.tuners.ia3", "peft.tuners.adalora"} <= set(method_paths())


def test_exclusions_are_reference_names() -> None:
    every = {n for m in PATHS + method_paths() for n in public_names(m)}
    every |= {f"{m}:{n}" for m in PATHS + method_paths() for n in public_names(m)}
    stale = sorted(set(EXCLUDED) - every)
    assert not stale, f"exclusions that name nothing in the reference: {stale}"


def test_adapter_layers_pass_peft_isinstance_checks() -> None:
    """``BaseTunerLayer`` / ``LoraLayer`` / ``LoraModel`` / ``BaseTuner`` checks on a peftkit LoRA model."""
    from peftkit.tuners.ia3 import IA3Layer
    from peftkit.tuners.lora import LoraLayer, LoraModel
    from tests._tiny import tiny_llama

    import peftkit
    from peftkit.tuners.tuners_utils import BaseTuner, BaseTunerLayer

    model = peftkit.get_peft_model(tiny_llama(), peftkit.LoraConfig(r=4))
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == 4 and all(isinstance(m, LoraLayer) and not isinstance(m, IA3Layer) for m in layers)
    assert isinstance(model.base_model, LoraModel) and isinstance(model.base_model, BaseTuner)
    assert not any(isinstance(m, BaseTunerLayer) for m in tiny_llama().modules())


def test_check_target_module_exists_matches_the_reference() -> None:
    from peft.tuners.tuners_utils import check_target_module_exists as reference

    from peftkit.tuners.tuners_utils import check_target_module_exists

    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.up_proj",
        "lm_head",
    ]
    configs = [
        dict(target_modules=["q_proj", "v_proj"]),
        dict(target_modules=r".*\.(q|up)_proj"),
        dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1]),
        dict(target_modules=["q_proj", "up_proj"], exclude_modules=["up_proj"]),
        dict(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"]),
    ]
    for fields in configs:
        ours, theirs = __import__("peftkit").LoraConfig(**fields), peft.LoraConfig(**fields)
        for name in names:
            assert bool(check_target_module_exists(ours, name)) == bool(reference(theirs, name)), (fields, name)


def test_get_peft_config_and_cast_mixed_precision_params_match_the_reference() -> None:
    from tests._tiny import tiny_llama

    import peftkit

    fields = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    ours, theirs = peftkit.get_peft_config(dict(fields)), peft.get_peft_config(dict(fields))
    assert type(ours).__name__ == type(theirs).__name__
    for field in ("peft_type", "r", "lora_alpha", "target_modules", "task_type", "lora_dropout", "bias"):
        assert getattr(ours, field) == getattr(theirs, field), field
    models = [lib.get_peft_model(tiny_llama(), lib.LoraConfig(r=4)) for lib in (peftkit, peft)]
    peftkit.cast_mixed_precision_params(models[0], torch.bfloat16)
    peft.cast_mixed_precision_params(models[1], torch.bfloat16)
    ours_dtypes = {k: v.dtype for k, v in models[0].state_dict().items()}
    assert ours_dtypes == {k: v.dtype for k, v in models[1].state_dict().items()}
    assert {torch.bfloat16, torch.float32} == set(ours_dtypes.values())


def test_load_peft_weights_matches_the_reference(tmp_path) -> None:
    from tests._tiny import tiny_llama

    import peftkit

    peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, init_lora_weights=False)).save_pretrained(tmp_path)
    theirs = peft.load_peft_weights(str(tmp_path), device="cpu")
    ours = peftkit.load_peft_weights(str(tmp_path), device="cpu")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert peftkit.utils.save_and_load.load_peft_weights is peftkit.load_peft_weights
