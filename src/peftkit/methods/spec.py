"""What a method tells the shared machinery about itself (one :class:`MethodSpec` per method).

This module is the contract between the method-agnostic core (:mod:`peftkit.functional`, :mod:`peftkit.io`,
the tuner) and the methods: the core reads specs only through :func:`method_for` / :func:`method_of`, whose
table :mod:`peftkit.registry` fills from :data:`peftkit.catalog.METHOD_SPECS`. The core therefore never imports
a method, and a method may build on the core.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from peftkit.config import CONFIG_CLASSES, PeftConfig
from peftkit.errors import ConfigError, TargetingError
from peftkit.layers.base import AdapterLayer
from peftkit.types import PeftType

#: Which biases train (and are saved) with an adapter: none, every bias of the model, or the biases of the
#: layers the adapter wraps.
BiasRule = Literal["none", "all", "adapter_layers"]

#: Module names whose base weights PEFT saves with an adapter that targets them (``save_embedding_layers``).
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")


def peft_embedding_rule(config: PeftConfig, requested: bool | str) -> bool:
    """PEFT's rule for saving base embedding weights: ``"auto"`` saves them when ``target_modules`` names an
    embedding layer (:data:`EMBEDDING_LAYER_NAMES`); ``True`` / ``False`` decide directly."""
    if requested != "auto":
        return bool(requested)
    if getattr(config, "trains_token_rows", False):  # PEFT: not when the adapter trains token rows
        return False
    targets = getattr(config, "target_modules", None) or ()
    return any(name in targets for name in EMBEDDING_LAYER_NAMES)


class ModelTensors(Protocol):
    """Tensors an adapter holds once per model and shares between all its layers (VeRA's frozen random
    projections ``A (r, max_in)`` and ``B (max_out, r)``).

    The core calls :meth:`create` once when the adapter is injected (before its layers, which receive the
    tensors in ``layer_facts``' ``shared`` argument), keeps them in the model's shared-tensor holder, saves
    them under ``<name>`` keys when :meth:`saved` says so, and loads them back before the layers' tensors.
    """

    #: Names of the tensors (``"vera_A"``); a file key is ``base_model.<name>`` (PEFT's), an in-memory key
    #: ``<name>.<adapter>``.
    names: tuple[str, ...]

    def create(
        self, config: PeftConfig, targets: Mapping[str, nn.Module], held: Mapping[str, Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The tensors for an adapter of ``config`` over ``targets`` (module name -> base module); ``held`` has
        the model's other adapters' tensors (adapter -> name -> tensor), e.g. for a method that reuses them."""
        ...

    def saved(self, config: PeftConfig) -> bool:
        """Whether the adapter's file holds the tensors (else they are re-created from the config on load)."""
        ...


@dataclass(frozen=True)
class CliOption:
    """A ``peftkit train`` option a method accepts: ``--<name>`` sets config field ``field``.

    Attributes:
        name: Option name with underscores (``"num_virtual_tokens"`` -> ``--num-virtual-tokens``).
        field: The config field it sets.
        type: ``int``, ``float``, ``str`` (``target_modules``-like lists are ``str``) or ``bool`` (a flag).
        help: One line for ``--help``.
        default: Used when the option is not given (``None``: the config class's own default).
        default_unless: Options whose presence drops ``default`` (the config class's own default applies), e.g.
            LoRA's ``all-linear`` targets and dropout when ``--target-parameters`` is given.
    """

    name: str
    field: str
    type: type = str
    help: str = ""
    default: Any = None
    default_unless: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A method's facts: its config class, layer classes, key quirks and defaults.

    Attributes:
        peft_type: The method's name on disk.
        config_class: Its config dataclass.
        model_class_name: PEFT's name for the tuner model (``"LoraModel"``), used in reprs and errors.
        prefix: Prefix of every adapter parameter name (``"lora_"``); base params never contain it.
        layer_table: Base module type -> adapter layer class; looked up along the base type's MRO.
        layer_facts: ``(config, module_name, base_module) -> facts`` handed to ``layer.update_layer``.
        default_targets: ``model_type -> target names`` for configs without ``target_modules``.
        linear_types: Module types that ``"all-linear"`` selects.
        file_key_renames: In-memory key suffix (adapter name removed) -> on-disk suffix.
        settle_config: ``(config, model, target_names) -> None``: records in the stored config what
            injection decided (PEFT saves it, e.g. LoRA's ``fan_in_fan_out`` for GPT-2 ``Conv1D``).
        prepare_config: ``(config, model) -> config``: a completed copy of the config, before targeting
            (e.g. IA3 fills in its architecture's ``feedforward_modules``); must not modify its input.
        finalize_state: ``(config, state) -> state``: last edit of the on-disk tensors of an adapter (keys
            without the model prefix), e.g. AdaLoRA drops the ranks its ``rank_pattern`` pruned.
        tuner_class: The method's ``TunerModel`` subclass (PEFT's ``LoraModel``, ``IA3Model``, ...);
            ``None`` uses ``TunerModel``.
        parameter_layer: The layer class for a config's ``target_parameters`` (LoRA's ``ParamWrapper``), built as
            ``parameter_layer(module, parameter_name=name)``; ``None``: the method adapts modules only.
        after_inject: ``(config, model, adapter_name) -> None``: last step of an injection, once every layer
            has the adapter (e.g. LoRA ties the output head's factors to the input embedding's).
        pattern_fields: Config fields that are ``{regex: value}`` overrides per module (LoRA's ``rank_pattern``,
            ``alpha_pattern``); a key that matches no adapted module is warned about.
        prompt_encoder: For prompt methods (no layer table): the encoder class, built as
            ``prompt_encoder(config, word_embeddings, init_weights)``; ``None`` for layer methods.
        bias_modes: Value of the config's ``bias`` field -> :data:`BiasRule` (LoRA: ``"lora_only"`` ->
            ``"adapter_layers"``); a config without a ``bias`` field trains no bias.
        embedding_rule: ``(config, save_embedding_layers) -> bool``: whether a save includes the base weights
            of adapted embedding layers (default: :func:`peft_embedding_rule`).
        init_warning: ``(config, adapter_name) -> message | None``: a warning to give when an adapter of this
            config is loaded.
        after_load: ``(model, config, adapter_name) -> None``, run once a new adapter's tensors are loaded (LoRA:
            a PiSSA/OLoRA initialisation rewrites the base weights again, as PEFT re-runs it at load).
        model_tensors: Tensors held once per model and shared by the adapter's layers (see
            :class:`ModelTensors`); ``None`` for methods whose layers own everything.
        public_names: Names ``peftkit`` exports for this method (config, tuner model, encoders...), as
            ``{name: object}``; PEFT code reaches them as ``peft.<name>``.
        cli_name: The ``peftkit train --method`` value (lower case).
        cli_options: The ``peftkit train`` options this method accepts (see :class:`CliOption`).
        cli_learning_rate: ``peftkit train``'s default peak learning rate for this method.
        cli_config: ``(fields, total_steps) -> fields``: last edit of the config fields the command line built
            (AdaLoRA needs the number of steps as ``total_step``).
        trainer_callbacks: ``() -> callbacks`` a ``Trainer`` needs for this method (AdaLoRA's rank allocation).
        describe_module: ``(module, tensors, config_dict) -> (rank, |delta W|)`` for ``peftkit inspect``: the
            rank of a module's update and the Frobenius norm of its weight change, ``None`` where it has none.
    """

    peft_type: PeftType
    config_class: type[PeftConfig]
    model_class_name: str
    prefix: str = ""
    layer_table: dict[type, type[AdapterLayer]] = field(default_factory=dict)
    layer_facts: Callable[[Any, str, nn.Module], Any] | None = None
    default_targets: Callable[[str | None], list[str] | None] | None = None
    linear_types: tuple[type, ...] = ()
    file_key_renames: dict[str, str] = field(default_factory=dict)
    settle_config: Callable[[Any, nn.Module, Sequence[str]], None] | None = None
    prepare_config: Callable[[Any, nn.Module], Any] | None = None
    finalize_state: Callable[[Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    tuner_class: type[nn.Module] | None = None
    parameter_layer: type[AdapterLayer] | None = None
    prompt_encoder: type[nn.Module] | None = None
    pattern_fields: tuple[str, ...] = ()
    after_inject: Callable[[Any, nn.Module, str], None] | None = None
    bias_modes: Mapping[str, BiasRule] = field(default_factory=lambda: {"none": "none"})
    embedding_rule: Callable[[Any, bool | str], bool] = peft_embedding_rule
    init_warning: Callable[[Any, str], str | None] | None = None
    after_load: Callable[[Any, Any, str], None] | None = None
    model_tensors: ModelTensors | None = None
    public_names: Mapping[str, object] = field(default_factory=dict)
    cli_name: str = ""
    cli_options: tuple[CliOption, ...] = ()
    cli_learning_rate: float = 1e-3
    cli_config: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    trainer_callbacks: Callable[[], list[Any]] | None = None
    describe_module: (
        Callable[[str, Mapping[str, torch.Tensor], Mapping[str, Any]], tuple[int | None, float | None]] | None
    ) = None

    @property
    def is_prompt_learning(self) -> bool:
        """``True`` for prompt methods: virtual tokens from a prompt encoder instead of adapter layers."""
        return self.prompt_encoder is not None

    @property
    def adaptable_types(self) -> tuple[type, ...]:
        """The base module types this method can wrap."""
        return tuple(self.layer_table)

    def adaptable_for(self, config: PeftConfig) -> tuple[type, ...]:
        """The base module types ``config`` can wrap: :attr:`adaptable_types` and its registered custom types."""
        return self.adaptable_types + tuple(custom_layers(config))

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of this method's layers (a registered custom layer subclasses one)."""
        return isinstance(module, tuple(self.layer_table.values()))

    def layer_class_for(self, module: nn.Module, config: PeftConfig | None = None) -> type[AdapterLayer]:
        """The adapter layer class for ``module``, found along its type's MRO, in ``config``'s custom layers
        (:func:`custom_layers`) first, then in :attr:`layer_table`.

        Raises:
            TargetingError: the method has no layer for this module type.
        """
        custom = custom_layers(config)
        for cls in type(module).__mro__:
            if cls in custom:
                warnings.warn(
                    f"{type(module).__name__} is adapted by the custom layer {custom[cls].__name__} registered with "
                    "_register_custom_module; peftkit does not check it, its results are the custom layer's own.",
                    stacklevel=5,
                )
                return custom[cls]
            if cls in self.layer_table:
                return self.layer_table[cls]
        kinds = ", ".join(sorted(t.__name__ for t in self.layer_table))
        raise TargetingError(f"{self.peft_type.value} cannot adapt a {type(module).__name__} (supported: {kinds}).")

    def bias_rule(self, config: PeftConfig) -> BiasRule:
        """What ``config.bias`` asks for, as a :data:`BiasRule`.

        Raises:
            ConfigError: the value is not one of this method's :attr:`bias_modes`.
        """
        mode = getattr(config, "bias", "none")
        if mode not in self.bias_modes:
            raise ConfigError(
                f"{type(config).__name__}.bias={mode!r} is not a bias mode of {self.peft_type.value}; "
                f"use one of: {', '.join(self.bias_modes)}."
            )
        return self.bias_modes[mode]


def custom_layers(config: PeftConfig | None) -> dict[type, type[AdapterLayer]]:
    """Base module type -> adapter layer class registered on ``config`` with PEFT's experimental
    ``LoraConfig._register_custom_module`` (dynamic dispatch); empty for every other config."""
    return dict(getattr(config, "_custom_modules", None) or {})


#: ``PeftType`` -> spec of every registered method (filled by :mod:`peftkit.registry`).
SPECS: dict[PeftType, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    """Make ``spec`` known to the core (and its config class to ``PeftConfig.from_dict``)."""
    SPECS[spec.peft_type] = spec
    CONFIG_CLASSES[spec.peft_type.value] = spec.config_class


def method_for(peft_type: PeftType | str) -> MethodSpec:
    """The spec of ``peft_type`` (an enum or its string).

    Raises:
        ConfigError: no such method is registered.
    """
    try:
        return SPECS[PeftType(peft_type)]
    except (ValueError, KeyError, TypeError):
        known = ", ".join(t.value for t in SPECS)
        raise ConfigError(f"peft_type={peft_type!r} is not implemented by peftkit; known methods: {known}.") from None


def method_of(config: PeftConfig) -> MethodSpec:
    """The spec of the method a config describes.

    Raises:
        ConfigError: the config has no ``peft_type`` or its method is not registered.
    """
    if config.peft_type is None:
        raise ConfigError(f"{type(config).__name__} has no peft_type.")
    return method_for(config.peft_type)
