"""The selection, import layer and reporting logic of ``scripts/peft_suite.py`` (PEFT's own test suite run
against peftkit), on literal inputs: no download, no pytest subprocess."""

from __future__ import annotations

import json
import sys
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import peft_suite  # noqa: E402
import peft_suite_plugin  # noqa: E402
import peft_suite_shim  # noqa: E402

pytest_plugins = ("pytester",)


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


# One PEFT LoraConfig setting per LoRA variant of the plugin's vocabulary (field values as in a JSON config).
VARIANT_SAMPLES: dict[str, dict[str, Any]] = {
    "dora": {"use_dora": True},
    "gaussian": {"init_lora_weights": "gaussian"},
    "pissa": {"init_lora_weights": "pissa_niter_4"},
    "olora": {"init_lora_weights": "olora"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "mica": {"init_lora_weights": "mica"},
    "corda": {"corda_config": {"corda_method": "kpm"}},
    "eva": {"init_lora_weights": "eva"},
    "loftq": {"loftq_config": {"loftq_bits": 4}},
    "lora_ga": {"init_lora_weights": "lora_ga"},
    "alora": {"alora_invocation_tokens": [2]},
    "qalora": {"use_qalora": True},
    "velora": {"velora_config": {"num_groups": 2}},
    "bdlora": {"use_bdlora": {"target_modules_bd_a": ["lin0"]}},
    "monteclora": {"monteclora_config": {"num_samples": 2}},
    "kasa": {"kasa_config": {"beta": 0.01}},
    "arrow": {"arrow_config": {"top_k": 2}},
    "layer_replication": {"layer_replication": [[0, 1]]},
    "megatron": {"megatron_config": {"tensor_model_parallel_size": 1}},
    "target_parameters": {"target_modules": [], "target_parameters": ["experts.gate_up_proj"]},
    "trainable_tokens": {"trainable_token_indices": [1, 2]},
}


def test_declared_variants_come_from_the_catalog_and_use_the_plugins_names() -> None:
    from peftkit.catalog import LORA_VARIANTS

    assert peft_suite.declared_variants(SCRIPTS.parent / "src") == sorted(LORA_VARIANTS)
    assert LORA_VARIANTS <= peft_suite_plugin.VARIANTS  # a misspelt name would widen nothing, silently


def test_lora_config_accepts_exactly_the_declared_variants() -> None:
    """The declaration is checked against behaviour: peftkit's LoraConfig takes every declared variant and
    refuses every other one of PEFT's (so the runner's scope cannot claim what peftkit lacks)."""
    import peftkit
    from peftkit.catalog import LORA_VARIANTS
    from peftkit.errors import ConfigError, UnsupportedError

    assert set(VARIANT_SAMPLES) == peft_suite_plugin.VARIANTS
    for variant, fields in VARIANT_SAMPLES.items():
        assert peft_suite_plugin.variants_of_fields(fields) == {variant}
        try:
            peftkit.LoraConfig(**fields)
        except (ConfigError, UnsupportedError):
            assert variant not in LORA_VARIANTS, f"{variant} is declared but LoraConfig refuses {fields}"
        else:
            assert variant in LORA_VARIANTS, f"LoraConfig takes {fields}, but {variant} is not declared"


def test_variants_of_reference_configs_and_helpers() -> None:
    import peft

    of = peft_suite_plugin._variant_of
    assert of(peft.LoraConfig(target_modules=["x"], use_dora=True, init_lora_weights="olora")) == {"dora", "olora"}
    assert of(peft.LoraConfig(target_modules=["x"])) == set()
    assert of({"target_modules": ["x"], "velora_config": peft.VeloraConfig(num_groups=2)}) == {"velora"}
    assert of({"use_dora": False, "init_lora_weights": True}) == set()
    assert of(peft.KasaConfig) == {"kasa"} and of(peft.initialize_lora_eva_weights) == {"eva"}
    assert of(peft.LoraConfig) == set() and of(torch.nn.Linear) == set()


SUITE_LIKE = """
import functools

import pytest
from peft import LoraConfig, LoHaConfig, KasaConfig


def make(**kw):
    return LoraConfig(target_modules=["lin0"], **kw)


CASES = [
    ("plain", LoraConfig, {"target_modules": ["lin0"]}),
    ("dora", LoraConfig, {"target_modules": ["lin0"], "use_dora": True}),
    ("mica", LoraConfig, {"target_modules": ["lin0"], "init_lora_weights": "mica"}),
    ("loha", LoHaConfig, {"target_modules": ["lin0"]}),
]


@pytest.mark.parametrize("name, cls, kwargs", CASES)
def test_param(name, cls, kwargs):
    if kwargs.get("kasa_config"):  # read in the body only: the parameters decide
        pass


@pytest.mark.parametrize("extra", [{"use_dora": True}, {"init_lora_weights": "eva"}])
def test_kwargs_only(extra):
    LoraConfig(target_modules=["lin0"], **extra)


def decorated(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        return function(*args, **kwargs)

    return wrapper


@decorated
def test_decorated_other_method():
    LoHaConfig(target_modules=["lin0"])


def test_body_kwarg():
    LoraConfig(target_modules=["lin0"], velora_config=None)


def test_body_helper_class():
    make(kasa_config=KasaConfig())


class TestInit:
    def _config(self):
        return make(init_lora_weights="orthogonal")

    def test_through_method(self):
        self._config()

    @staticmethod
    def _velora():
        return make(velora_config={"num_groups": 2})

    def test_through_static_method(self):
        self._velora()

    def test_plain(self):
        make()
"""


def test_scope_rule_on_collected_tests(pytester: pytest.Pytester) -> None:
    """Real pytest items: a test is in scope by method when its methods are peftkit's, and by method and variant
    when every variant it configures (its parameters, else its code and its own module's helpers) is declared."""
    items = {item.name: item for item in pytester.getitems(SUITE_LIKE)}
    methods, variants = {"LORA"}, {"dora"}
    decisions = {name: peft_suite_plugin._decide(item, methods, variants) for name, item in items.items()}
    assert decisions == {
        "test_param[plain-LoraConfig-kwargs0]": (True, True, ""),
        "test_param[dora-LoraConfig-kwargs1]": (True, True, ""),
        "test_param[mica-LoraConfig-kwargs2]": (True, False, "variant:mica"),
        "test_param[loha-LoHaConfig-kwargs3]": (False, False, "method:LOHA"),
        "test_kwargs_only[extra0]": (True, True, ""),
        "test_kwargs_only[extra1]": (True, False, "variant:eva"),
        "test_decorated_other_method": (False, False, "method:LOHA"),
        "test_body_kwarg": (True, False, "variant:velora"),
        "test_body_helper_class": (True, False, "variant:kasa"),
        "test_through_method": (True, False, "variant:orthogonal"),
        "test_through_static_method": (True, False, "variant:velora"),
        "test_plain": (True, True, ""),
    }
    assert peft_suite_plugin._decide(items["test_body_kwarg"], methods, None) == (True, True, "")


def test_table_counts_both_scopes() -> None:
    reference = {f"tests/test_a.py::t{i}": ("passed", "") for i in range(4)}
    kit = {"tests/test_a.py::t0": ("passed", ""), "tests/test_a.py::t2": ("passed", "")}
    narrow = {"tests/test_a.py::t0", "tests/test_a.py::t1"}
    table = peft_suite.tabulate(sorted(reference), reference, kit, narrow)
    assert table["test_a.py"] == {
        "selected": 4, "hub": 0, "ref": 4, "kit": 2, "v_selected": 2, "v_hub": 0, "v_ref": 2, "v_kit": 1,
    }  # fmt: skip
    assert peft_suite.render(table).splitlines()[-1].split() == ["TOTAL", *"4 0 4 2 50.0 2 2 1 50.0".split()]
