"""PEFT helpers that PEFT code and tests reach, at peftkit's same paths, against the reference."""

from __future__ import annotations

import peft.utils
import peft.utils.other

import peftkit.utils
import peftkit.utils.other


def test_infer_device_matches_reference() -> None:
    assert peftkit.utils.infer_device() == peft.utils.infer_device()
    assert peftkit.utils.other.infer_device() == peft.utils.other.infer_device()


def test_import_utils_facts_match_reference() -> None:
    import peft.import_utils

    import peftkit.import_utils

    assert peftkit.import_utils.is_transformers_ge_v5 == peft.import_utils.is_transformers_ge_v5
    functions = [name for name in peftkit.import_utils.__all__ if name != "is_transformers_ge_v5"]
    assert functions
    for name in functions:  # same answers on this machine as the reference's checks
        assert getattr(peftkit.import_utils, name)() == getattr(peft.import_utils, name)(), name


def test_get_submodules_matches_reference() -> None:
    from peft.utils import _get_submodules as reference
    from tests._tiny import build_model

    from peftkit.utils import _get_submodules

    model = build_model("llama")
    for key in ("model.layers.0.self_attn.q_proj", "lm_head"):
        assert _get_submodules(model, key) == reference(model, key)


def test_all_available_adapter_names_matches_reference() -> None:
    import peft
    from tests._tiny import build_model

    import peftkit

    names = {}
    for lib in (peft, peftkit):
        model = lib.get_peft_model(build_model("llama"), lib.LoraConfig(target_modules=["q_proj"]))
        model.add_adapter("other", lib.LoraConfig(target_modules=["q_proj"]))
        names[lib.__name__] = model.base_model.model.model.layers[0].self_attn.q_proj._all_available_adapter_names()
    assert names["peftkit"] == names["peft"] == ["default", "other"]
