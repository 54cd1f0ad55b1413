"""The tuner model (PEFT's ``LoraModel``): the wrapped model plus its adapter configs.

``PeftModel.base_model`` is a :class:`TunerModel`; its ``model`` attribute is the user's model, which is
why checkpoint keys start with ``base_model.model.``. Every operation delegates to :mod:`peftkit.functional`.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from peftkit import functional as F
from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, ConfigError
from peftkit.layers.base import AdapterLayer
from peftkit.layers.placement import adapters_on_meta
from peftkit.layers.state import AdapterStatus
from peftkit.methods.spec import method_of
from peftkit.targeting import ALL_LINEAR


def supports_lora_conversion(model: nn.Module, adapter_name: str = "default") -> bool:
    """Whether :func:`~peftkit.convert_to_lora` can convert ``adapter_name`` of ``model``: every adapter layer says
    so (:meth:`~peftkit.layers.base.AdapterLayer.supports_lora_conversion`); never a prompt-learning adapter."""
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is not None and config.is_prompt_learning:
        return False
    return all(m.supports_lora_conversion(adapter_name) for m in model.modules() if isinstance(m, AdapterLayer))


#: What :meth:`TunerModel.get_model_config` gives for a model without a ``config`` (PEFT's ``DUMMY_MODEL_CONFIG``).
DUMMY_MODEL_CONFIG: dict[str, Any] = {"model_type": "custom"}


class TunerModel(nn.Module):
    """Holds ``model`` (adapters injected in place) and ``peft_config`` (adapter name -> config).

    Args:
        model: The model to adapt.
        peft_config: A config (for ``adapter_name``) or a dict of configs; ``None`` starts empty.
        adapter_name: Name of the first adapter.
    """

    #: PEFT's flag for tuners whose state ``inject_adapter_in_model`` cannot create without the tuner. peftkit keeps
    #: tensors shared by an adapter's layers on the model itself, so every method injects directly: ``False``.
    uses_shared_state: ClassVar[bool] = False
    #: Whether adapters of different methods may share the model (``PeftMixedModel``'s tuner).
    mixed_methods: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig | dict[str, PeftConfig] | None,
        adapter_name: str = "default",
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter: str | list[str] = adapter_name
        #: PEFT's bookkeeping: every module (full name) and parameter (``module.param``) any adapter added so far
        #: adapted, each once, in the order the adapters were added (then model order); deletes do not shrink them.
        self.targeted_module_names: list[str] = []
        self.targeted_parameter_names: list[str] = []
        configs = peft_config if isinstance(peft_config, dict) else ({adapter_name: peft_config} if peft_config else {})
        for name, config in configs.items():
            self.inject_adapter(name, config, low_cpu_mem_usage=low_cpu_mem_usage)

    # -- adapters ---------------------------------------------------------------------------------
    def inject_adapter(
        self, adapter_name: str, config: PeftConfig, init_weights: bool = True, low_cpu_mem_usage: bool = False
    ) -> None:
        """Add a freshly initialised adapter (PEFT's ``inject_adapter``); the active adapter is unchanged
        unless this is the first one. ``low_cpu_mem_usage`` creates its tensors on ``meta``, uninitialised (a
        load assigns them)."""
        config = copy.deepcopy(config)
        self.check_new_adapter(adapter_name, config)
        active = self.active_adapters if self.peft_config else [adapter_name]
        with adapters_on_meta(low_cpu_mem_usage):
            init = init_weights and not low_cpu_mem_usage
            record = F.inject_adapter(self.model, config, adapter_name, init_weights=init, active=active)
        self.register_config(adapter_name, record.config or config, record.target_names, record.parameter_names)

    def check_new_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Refuse ``config`` before anything changes if it cannot join this tuner's adapters: a second adapter
        that trains base biases (``bias`` other than ``"none"``: two adapters cannot own the same base tensors),
        then the method's own :meth:`check_new_config`.

        Raises:
            ConfigError: naming the adapter that already trains biases.
        """
        biases = {name: getattr(c, "bias", "none") for name, c in self.peft_config.items() if name != adapter_name}
        owner = next((name for name, bias in biases.items() if bias != "none"), None)
        if owner is not None and getattr(config, "bias", "none") != "none":
            raise ConfigError(
                f"Adapter {owner!r} already trains base-model biases (bias={biases[owner]!r}); only one adapter per "
                f"model can. Add {adapter_name!r} with bias='none'."
            )
        self.check_new_config(adapter_name, config)

    def check_new_config(self, adapter_name: str, config: PeftConfig) -> None:
        """Refuse ``config`` before anything changes if this tuner cannot hold it next to its adapters (a hook:
        AdaLoRA trains one adapter at most)."""

    def register_config(
        self, adapter_name: str, config: PeftConfig, target_names: Sequence[str], parameter_names: Sequence[str] = ()
    ) -> None:
        """Remember ``config`` for ``adapter_name``, completed as PEFT stores it: ``all-linear`` expanded to the
        module names, missing ``target_modules`` set to the architecture default, method-specific facts; and the
        adapted ``target_names`` / ``parameter_names`` in :attr:`targeted_module_names` /
        :attr:`targeted_parameter_names`."""
        self.targeted_module_names.extend(n for n in dict.fromkeys(target_names) if n not in self.targeted_module_names)
        known = self.targeted_parameter_names
        known.extend(n for n in dict.fromkeys(parameter_names) if n not in known)
        if hasattr(config, "target_modules"):  # layer methods only
            spec = method_of(config)
            if config.target_modules == ALL_LINEAR:
                config.target_modules = set(target_names)
            elif config.target_modules is None:
                config.target_modules = F.resolve_targets(self.model, config, spec)
            if spec.settle_config is not None:
                spec.settle_config(config, self.model, target_names)
        if not self.peft_config:
            self.active_adapter = adapter_name
        self.peft_config[adapter_name] = config

    @property
    def prefix(self) -> str:
        """PEFT's name prefix of this method's adapter parameters (``"lora_"``, ``"ia3_"``; ``""`` when empty)."""
        return method_of(next(iter(self.peft_config.values()))).prefix if self.peft_config else ""

    @property
    def active_adapters(self) -> list[str]:
        """The active adapters' names."""
        return [self.active_adapter] if isinstance(self.active_adapter, str) else list(self.active_adapter)

    def check_names(self, names: Sequence[str]) -> None:
        """Raise :class:`~peftkit.errors.AdapterNameError` unless every name in ``names`` is an adapter."""
        missing = [n for n in names if n not in self.peft_config]
        if missing:
            raise AdapterNameError(f"Adapter(s) {missing} not found; present: {sorted(self.peft_config)}.")

    def frozen_adapters(self) -> set[str]:
        """Adapters loaded for inference (``is_trainable=False``): activating them does not make them train."""
        return {name for name, config in self.peft_config.items() if config.inference_mode}

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Activate ``adapter_name`` (a name or a list); it trains unless ``inference_mode`` or loaded frozen."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self.check_names(names)
        F.set_active_adapters(self.model, names, trainable=not inference_mode, frozen=self.frozen_adapters())
        self.active_adapter = adapter_name

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Let ``adapter_names`` train (or stop training), active or not (PEFT's ``set_requires_grad``)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.check_names(names)
        F.set_requires_grad(self.model, names, requires_grad)

    def set_trainable_adapters(self, names: Sequence[str]) -> None:
        """Make exactly ``names`` the trainable adapters (the Trainer restores a checkpoint's choice)."""
        self.check_names(names)
        F.set_trainable_adapters(self.model, names)

    @property
    def status(self) -> AdapterStatus:
        """The adapter state recorded in the model (see :mod:`peftkit.layers.state`)."""
        return F.model_status(self.model) or AdapterStatus(tuple(self.active_adapters) if self.peft_config else ())

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name``; :func:`~peftkit.layers.state.status_after_delete` says what stays active."""
        self.check_names([adapter_name])
        remaining = [n for n in self.peft_config if n != adapter_name]
        status = F.delete_adapter(self.model, adapter_name, frozen=self.frozen_adapters(), remaining=remaining)
        del self.peft_config[adapter_name]
        active = list(status.active)
        self.active_adapter = active[0] if len(active) == 1 else active

    def enable_adapter_layers(self) -> None:
        """Turn the adapters back on; what trained before they were disabled trains again."""
        F.enable_adapters(self.model, True)

    def disable_adapter_layers(self) -> None:
        """Turn every adapter off: the model computes like its base and nothing trains.

        Warns when some adapter layers were switched off one by one (``layer.enable_adapters(False)``) and others
        not: that mix cannot come back, turning the adapters on again (or leaving ``disable_adapter()``) turns on
        every layer."""
        states = {m.disable_adapters for _, m in F.iter_adapter_modules(self.model) if isinstance(m, AdapterLayer)}
        if len(states) > 1:
            warnings.warn(
                "Some adapter layers are switched off and others are on; after disabling all of them, enabling "
                "(or leaving disable_adapter()) switches every layer on, not back to that mix.",
                stacklevel=4,
            )
        F.enable_adapters(self.model, False)

    @property
    def disabled(self) -> bool:
        """Whether the adapters are switched off: all of them (a mix of layers switched off one by one is not, so
        leaving ``disable_adapter()`` switches every layer on, as in PEFT)."""
        if not F.adapters_disabled(self.model):
            return False
        return all(m.disable_adapters for _, m in F.iter_adapter_modules(self.model) if isinstance(m, AdapterLayer))

    # -- merging ----------------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge the active adapters (or ``adapter_names``) into the base weights, keeping the layers."""
        if adapter_names is not None:
            self.check_names(adapter_names)
        F.merge_adapters(self.model, adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        """Undo every merge, restoring the base weights."""
        F.unmerge_adapters(self.model)

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge and return the plain model (adapter layers replaced by their merged base layers)."""
        if adapter_names is not None:
            self.check_names(adapter_names)
        return F.unload(self.model, merge=True, safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        """Return the plain model without merging (adapters dropped)."""
        return F.unload(self.model, merge=False)

    # -- plumbing ---------------------------------------------------------------------------------
    supports_lora_conversion = supports_lora_conversion  # PEFT's method, on this tuner model

    @staticmethod
    def get_model_config(model: nn.Module) -> Any:
        """``model.config`` as a dict (PEFT's ``BaseTuner.get_model_config``): through its ``to_dict()`` (a
        transformers config), as fields (a dataclass), as it is (already a dict, or anything else), or
        :data:`DUMMY_MODEL_CONFIG` (a copy) when the model has no ``config``."""
        missing = object()
        config = getattr(model, "config", missing)
        if config is missing:
            return dict(DUMMY_MODEL_CONFIG)
        if hasattr(config, "to_dict"):
            return config.to_dict()
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            return dataclasses.asdict(config)
        return config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward."""
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


def tuner_class_for(config: PeftConfig | None) -> type[TunerModel]:
    """The tuner model class of ``config``'s method (``TunerModel`` unless its spec names a subclass)."""
    custom = method_of(config).tuner_class if config is not None else None
    if custom is None:
        return TunerModel
    assert issubclass(custom, TunerModel), f"{custom} must subclass TunerModel"
    return custom
