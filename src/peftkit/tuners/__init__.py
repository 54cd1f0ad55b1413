"""PEFT's ``peft.tuners`` import path: every method's public names, and one module per method at PEFT's path
``peftkit.tuners.<method>`` (``from peftkit.tuners.lora import LoraLayer, LoraModel, LoraConfig``).

The per-method modules are built from the registry (:data:`peftkit.registry.METHODS`), so a method added to the
catalog appears here without an edit. ``tuners.<method>`` (the ``peft_type`` in lower case: ``lora``,
``ia3``, ``p_tuning``, ``ln_tuning``) holds:

* the method's public names (its config, tuner model, encoders: ``MethodSpec.public_names``);
* its adapter layer classes under their class names (``Linear``, ``Embedding``, ``Conv``...) and under the
  names of the ``torch.nn`` modules they wrap, as PEFT names its layers (``Conv2d``: the layer class that
  adapts ``nn.Conv2d``);
* the base class they share under PEFT's name for it, the tuner model's name with ``Layer`` for ``Model``
  (``LoraLayer``, ``IA3Layer``, ``AdaLoraLayer``): ``isinstance`` against it is true for every layer of the method.

PEFT's files in a method's folder (``tuners.<method>.layer``, ``.config``, ``.model``) are the same module under
those names, so ``from peft.tuners.lora.layer import LoraLayer`` works too.
"""

from __future__ import annotations

import importlib
import sys
import types

from peftkit.layers.base import AdapterLayer
from peftkit.methods.spec import MethodSpec
from peftkit.registry import METHODS, public_names
from peftkit.tuners import tuners_utils

_NAMES = public_names()
globals().update(_NAMES)


def shared_layer_class(spec: MethodSpec) -> type[AdapterLayer] | None:
    """The most derived class that every adapter layer class of ``spec`` derives from (``None`` without layers)."""
    layers = list(dict.fromkeys(spec.layer_table.values()))
    if not layers:
        return None
    return next(c for c in layers[0].__mro__ if all(issubclass(other, c) for other in layers))


def method_module(spec: MethodSpec) -> types.ModuleType:
    """The ``peftkit.tuners.<method>`` module of ``spec`` (see the module docstring for what it holds)."""
    module = types.ModuleType(f"{__name__}.{spec.peft_type.value.lower()}", f"PEFT's path for {spec.model_class_name}.")
    names: dict[str, object] = dict(spec.public_names)
    names.update({cls.__name__: cls for cls in spec.layer_table.values()})
    if spec.parameter_layer is not None:  # LoRA's ParamWrapper (target_parameters)
        names[spec.parameter_layer.__name__] = spec.parameter_layer
    names.update(
        {base.__name__: cls for base, cls in spec.layer_table.items() if base.__module__.startswith("torch.nn")}
    )
    shared = shared_layer_class(spec)
    if shared is not None and spec.model_class_name.endswith("Model"):
        names[spec.model_class_name.removesuffix("Model") + "Layer"] = shared
    vars(module).update(names, __all__=sorted(names))
    return module


#: PEFT's files inside ``tuners/<method>/`` that users import from; each is an alias of the method's module.
SUBMODULES = ("layer", "config", "model")
#: PEFT's files inside ``tuners/<method>/`` that peftkit holds as a module of their own (method -> file -> module).
OWN_SUBMODULES: dict[str, dict[str, str]] = {
    "lora": {
        "variants": "peftkit.methods.lora.variants",
        "monteclora": "peftkit.methods.lora.variants.monteclora",
        "arrow": "peftkit.arrow",
        "loraga": "peftkit.methods.lora.loraga",
        "corda": "peftkit.methods.lora.corda",
        "eva": "peftkit.methods.lora.eva",
        "velora": "peftkit.methods.lora.variants.velora_math",
        "conversion": "peftkit.methods.lora.conversion",
    }
}

#: Those of :data:`OWN_SUBMODULES` whose ``__all__`` (``create_arrow_model``, ``preprocess_loraga``) PEFT also exports
#: from ``tuners.<method>`` and ``tuners``.
EXPORTING_SUBMODULES = ("arrow", "loraga", "conversion")


def _install_method_modules() -> list[str]:
    """Register every method's module in ``sys.modules`` and as an attribute of this package."""
    installed = []
    for spec in METHODS.values():
        module = method_module(spec)
        short = module.__name__.rpartition(".")[2]
        sys.modules.setdefault(module.__name__, module)
        for part in SUBMODULES:  # ``from peft.tuners.lora.layer import LoraLayer``: the same names
            sys.modules.setdefault(f"{module.__name__}.{part}", module)
            setattr(module, part, module)
        for part, path in OWN_SUBMODULES.get(short, {}).items():  # ``peft.tuners.lora.variants``
            own = sys.modules.setdefault(f"{module.__name__}.{part}", importlib.import_module(path))
            exported = {name: getattr(own, name) for name in own.__all__} if part in EXPORTING_SUBMODULES else {}
            vars(module).update(exported, **{part: own}, __all__=sorted({*module.__all__, *exported}))
            globals().update(exported)
            _NAMES.update(exported)
        globals()[short] = sys.modules[module.__name__]
        installed.append(short)
    return installed


METHOD_MODULES = _install_method_modules()

__all__ = ["METHOD_MODULES", "tuners_utils", *sorted(_NAMES)]
