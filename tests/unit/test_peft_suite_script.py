"""The selection, import layer and reporting logic of ``scripts/peft_suite.py`` (PEFT's own test suite run
against peftkit), on literal inputs: no download, no pytest subprocess."""

from __future__ import annotations

import json
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import peft_suite  # noqa: E402
import peft_suite_plugin  # noqa: E402
import peft_suite_shim  # noqa: E402


def test_results_fold_phases_and_tabulate_per_file(tmp_path: Path) -> None:
    rows = [
        {"nodeid": "tests/test_a.py::t1", "when": "call", "outcome": "passed"},
        {"nodeid": "tests/test_a.py::t1", "when": "teardown", "outcome": "failed", "message": "boom"},
        {"nodeid": "tests/test_a.py::t2", "when": "call", "outcome": "passed"},
        {"nodeid": "tests/test_b.py::t3", "when": "setup", "outcome": "skipped", "message": "gpu"},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folded = peft_suite.read_results(path)
    assert folded == {
        "tests/test_a.py::t1": ("failed", "boom"),
        "tests/test_a.py::t2": ("passed", ""),
        "tests/test_b.py::t3": ("skipped", "gpu"),
    }
    reference = {
        "tests/test_a.py::t1": ("passed", ""),
        "tests/test_a.py::t2": ("passed", ""),
        "tests/test_b.py::t3": ("failed", "OSError: We couldn't connect to 'https://huggingface.co' to load"),
        "tests/test_b.py::t4": ("passed", ""),
    }
    kit = {"tests/test_a.py::t1": ("passed", ""), "tests/test_b.py::t4": ("failed", "ValueError: 12 != 13")}
    table = peft_suite.tabulate(sorted(reference), reference, kit)
    assert table == {
        "test_a.py": {"selected": 2, "hub": 0, "ref": 2, "kit": 1},
        "test_b.py": {"selected": 2, "hub": 1, "ref": 1, "kit": 0},
    }
    text = peft_suite.render(table)
    assert text.splitlines()[-1].split() == ["TOTAL", "4", "1", "3", "1", "33.3"]
    groups = peft_suite.failure_groups(reference, kit)
    assert groups == [(1, "not run"), (1, "ValueError: # != #")]


def test_in_scope_methods_come_from_the_catalog() -> None:
    from peftkit.catalog import METHOD_SPECS

    assert peft_suite.in_scope_methods(SCRIPTS.parent / "src") == list(METHOD_SPECS)


def test_methods_of_reference_objects() -> None:
    import peft

    assert peft_suite_plugin._method_of(peft.LoraConfig) == "LORA"
    assert peft_suite_plugin._method_of(peft.LoHaConfig(target_modules=["x"])) == "LOHA"
    assert peft_suite_plugin._method_of(peft.tuners.ia3.IA3Model) == "IA3"
    assert peft_suite_plugin._method_of(int) is None


def test_shim_maps_to_real_peftkit_modules_and_marks_what_is_missing() -> None:
    import peftkit.config

    loader = peft_suite_shim._Loader()
    module = loader.create_module(ModuleSpec("peft.config", loader))
    loader.exec_module(module)
    assert module.PeftConfig is peftkit.config.PeftConfig
    placeholder = module.NoSuchNameInPeftkit
    for use in (lambda: placeholder().attribute, lambda: placeholder()(), lambda: placeholder.attribute):
        with pytest.raises(peft_suite_shim.MissingInPeftkit, match=r"peft\.config\.NoSuchNameInPeftkit"):
            use()
    assert peft_suite_shim.MISSING["peft.config.NoSuchNameInPeftkit"] >= 1
    assert not isinstance(1, placeholder) and not issubclass(int, placeholder)  # no object is of a missing class
    absent = loader.create_module(ModuleSpec("peft.no_such_module", loader))
    loader.exec_module(absent)
    with pytest.raises(peft_suite_shim.MissingInPeftkit):
        absent.Anything().method()
    assert not any(isinstance(f, peft_suite_shim._Finder) for f in sys.meta_path)  # installed only by its hook
