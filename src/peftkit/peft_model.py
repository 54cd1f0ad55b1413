"""``PeftModel``: PEFT's user-facing wrapper, a thin shell over :class:`~peftkit.tuner.TunerModel`.

Layout (as PEFT's, so state-dict keys match): ``PeftModel.base_model`` is the tuner model and
``PeftModel.base_model.model`` the user's model with adapters injected in place. For prompt methods
``PeftModel.base_model`` is the user's model itself and ``PeftModel.prompt_encoder`` holds the encoders; the
adapters are then managed by a :class:`~peftkit.methods.prompt.tuner.PromptTuner` (see :attr:`PeftModel._tuner`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from peftkit import functional as F
from peftkit.adapter_state import replace_existing_adapter, set_requires_grad
from peftkit.compile_frames import eager_frame
from peftkit.config import PeftConfig, PromptLearningConfig
from peftkit.errors import AdapterNameError, CheckpointError, ConfigError
from peftkit.io.hub import push_adapter_to_hub
from peftkit.io.keys import MODEL_PREFIX, add_prefix, remap_keys
from peftkit.io.load import attach_adapter, check_same_adapter_config, read_weights, reload_adapter, split_hub_kwargs
from peftkit.io.save import save_adapters
from peftkit.io.state import adapter_state_dict
from peftkit.layers.dtypes import cast_adapter_dtype
from peftkit.layers.parameter_count import count_parameters
from peftkit.layers.walk import switch_to_eval
from peftkit.locking import exclusive
from peftkit.methods.lora.variants.alora import alora_call
from peftkit.methods.prompt import model as prompt
from peftkit.methods.prompt.tuner import PromptTuner
from peftkit.quant.prepare import inputs_require_grad_unless_quantized
from peftkit.status import get_layer_status, get_model_status
from peftkit.tuner import supports_lora_conversion, tuner_class_for
from peftkit.types import TaskType

#: ``task_type`` -> ``PeftModelFor*`` class, filled by :mod:`peftkit.tasks` (which builds on this module) for
#: :meth:`PeftModel.from_pretrained`'s choice of class.
TASK_CLASSES: dict[TaskType, type[PeftModel]] = {}


class PeftModel(nn.Module):
    """A model with adapters. Build with :func:`~peftkit.get_peft_model` or :meth:`from_pretrained`.

    Args:
        model: The base model (adapters are injected into it in place).
        peft_config: The first adapter's config; ``None`` wraps without adapters (used by loaders).
        adapter_name: The first adapter's name.
        autocast_adapter_dtype: float32 layer adapters on a half-precision base (PEFT's default), else its dtype.
    """

    #: The task whose inputs a prompt adapter extends (set by the task classes).
    prompt_task: TaskType | None = None

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig | None,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        super().__init__()
        self.special_peft_forward_args = {"adapter_names"}
        if peft_config is not None and peft_config.is_prompt_learning:
            prompt.check_task(self.prompt_task)
            config = self._prepare_config(peft_config, model)
            assert isinstance(config, PromptLearningConfig)  # is_prompt_learning says so
            PromptTuner.install(self, model).inject_adapter(adapter_name, config)
            return
        if peft_config is not None:
            peft_config = self._prepare_config(peft_config, model)
        self.base_model = tuner_class_for(peft_config)(model, peft_config, adapter_name, low_cpu_mem_usage)
        if peft_config is not None:
            cast_adapter_dtype(model, adapter_name, autocast_adapter_dtype)

    def _prepare_config(self, config: PeftConfig, model: nn.Module) -> PeftConfig:
        """Task classes adjust the config here (e.g. add the classifier to modules_to_save)."""
        return config

    # -- views --------------------------------------------------------------------------------
    @property
    def _is_prompt_learning(self) -> bool:
        return "_prompt_tuner" in self.__dict__

    @property
    def _tuner(self) -> Any:
        """What manages the adapters: the tuner model, or the prompt tuner for prompt methods."""
        return self.__dict__["_prompt_tuner"] if self._is_prompt_learning else self.base_model

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        """Adapter name -> config."""
        return self._tuner.peft_config

    @property
    def active_adapter(self) -> str | list[str]:
        """The active adapter's name (a list when several are active)."""
        return self._tuner.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        """The active adapters' names."""
        return self._tuner.active_adapters

    @property
    def active_peft_config(self) -> PeftConfig:
        """The config of the (first) active adapter."""
        return self.peft_config[self.active_adapters[0]]

    @property
    def peft_type(self) -> Any:
        """The active adapter's ``PeftType``."""
        return self.active_peft_config.peft_type

    @property
    def modules_to_save(self) -> set[str] | None:
        """Names of the modules trained in full and saved with the adapters, or ``None``."""
        names = {n for c in self.peft_config.values() for n in (getattr(c, "modules_to_save", None) or [])}
        return names or None

    def get_base_model(self) -> Any:
        """The wrapped user model (with adapter layers in place); typed ``Any``: usually a transformers model,
        whose ``generate``, ``config``... ``nn.Module`` does not declare."""
        return self.base_model if self._is_prompt_learning else self.base_model.model

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        return count_parameters(self)

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: N || all params: M || trainable%: P`` as PEFT does."""
        trained, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trained:,d} || all params: {total:,d} || trainable%: {100 * trained / total:.4f}")

    def prepare_model_for_gradient_checkpointing(self, model: nn.Module) -> nn.Module:
        """PEFT's name for :func:`peftkit.quant.prepare.inputs_require_grad_unless_quantized` on ``model``."""
        return inputs_require_grad_unless_quantized(model)

    # -- adapters -----------------------------------------------------------------------------
    @exclusive
    def add_adapter(
        self,
        adapter_name: str,
        peft_config: PeftConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add a new, freshly initialised adapter, not activated (:meth:`set_adapter` does); dtype as in the class."""
        if adapter_name in self.peft_config:
            raise AdapterNameError(f"An adapter named {adapter_name!r} already exists; choose another name.")
        self._check_same_kind(peft_config)
        config = self._prepare_config(peft_config, self.get_base_model())
        if self._is_prompt_learning:
            self._tuner.inject_adapter(adapter_name, config)
        else:
            self._tuner.inject_adapter(adapter_name, config, low_cpu_mem_usage=low_cpu_mem_usage)
            cast_adapter_dtype(self.get_base_model(), adapter_name, autocast_adapter_dtype)

    def _check_same_kind(self, config: PeftConfig) -> None:
        if self.peft_config and config.peft_type != self.peft_type:
            raise ConfigError(
                f"Cannot combine a {config.peft_type} adapter with {self.peft_type} adapters in one PeftModel "
                "(get_peft_model(..., mixed=True) gives a PeftMixedModel, which holds LoRA, LoHa and LoKr together)."
            )

    @exclusive
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter (its parameters train unless loaded for inference)."""
        self._tuner.set_adapter(adapter_name, inference_mode=inference_mode)

    @exclusive
    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter and its weights."""
        self._tuner.delete_adapter(adapter_name)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Let ``adapter_names`` train (or stop training) whether active or not."""
        self._tuner.set_requires_grad(adapter_names, requires_grad)

    @property
    def has_active_enabled_adapter(self) -> bool:
        """Whether a forward runs an adapter: adapters not disabled (``disable_adapter``) and one active."""
        return not self._tuner.disabled and bool(self.active_adapters)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager: inside it the model computes like its base model and nothing trains.

        On exit the previous state comes back: adapters that were already disabled (by an outer block or
        ``disable_adapter_layers()``) stay disabled, and exactly what trained before trains again.
        """
        was_disabled = self._tuner.disabled
        self._tuner.disable_adapter_layers()
        try:
            yield
        finally:
            if not was_disabled:
                self._tuner.enable_adapter_layers()

    # -- forward ------------------------------------------------------------------------------
    @eager_frame  # argument plumbing only; the model below it is what compiles
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Run the model; ``adapter_names`` (one per sample, ``"__base__"`` for none) routes a mixed batch.

        ``torch.compile`` runs this frame eagerly, not what it calls: a new mix of adapters does not recompile.
        """
        if self._is_prompt_learning:
            with F.inference_call(self.get_base_model(), None):
                kwargs["adapter_names"] = adapter_names
                return prompt.prompt_forward(self._tuner, self.prompt_task, args, kwargs)
        with F.inference_call(self.get_base_model(), adapter_names, training=self.training):
            with alora_call(self, args, kwargs, adapter_names):  # Activated LoRA's offsets (takes alora_offsets)
                return self.base_model(*args, **kwargs)  # the tuner's forward (AdaLoRA adds its penalty)

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The base model's ``generate``; ``adapter_names``: one per input row, also for the row's beams/copies."""
        if self._is_prompt_learning:
            with F.inference_call(self.get_base_model(), None):
                return prompt.prompt_generate(self._tuner, self.prompt_task, args, kwargs)
        with F.inference_call(self.get_base_model(), adapter_names, expand=True, training=self.training):
            with alora_call(self, args, kwargs, adapter_names, generate=True):
                return self.get_base_model().generate(*args, **kwargs)

    # -- state and files ----------------------------------------------------------------------
    def get_adapter_state_dict(
        self,
        adapter_name: str = "default",
        save_embedding_layers: bool | str = "auto",
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> dict:
        """The adapter's tensors keyed as in the file (``base_model.model.`` prefix, no adapter name).

        ``state_dict``: a full (gathered) state dict of this model to take the values from (FSDP, ZeRO-3).
        """
        if self._is_prompt_learning:
            return self._tuner.adapter_state_dict(adapter_name)
        self.base_model.check_names([adapter_name])
        config = self.peft_config[adapter_name]
        state = adapter_state_dict(self.get_base_model(), adapter_name, config, save_embedding_layers, state_dict)
        return add_prefix(state, MODEL_PREFIX)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: bool | str = "auto",
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        path_initial_model_for_weight_conversion: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        """Write each adapter (``default`` in ``save_directory``, others in subfolders) and a README.md card.

        Args:
            state_dict: A full state dict of this model gathered from shards (FSDP2, ZeRO-3): the adapter values
                are taken from it, never from the live (sharded) parameters.
            is_main_process: ``False`` on the other ranks of a distributed run: nothing is written.
            path_initial_model_for_weight_conversion: A PiSSA / OLoRA adapter's directory saved before training:
                write the equivalent rank-``2r`` LoRA of the original base (:mod:`peftkit.io.weight_conversion`).

        Raises:
            CheckpointError: a tensor to write is sharded, partitioned, empty or on ``meta``; the initial adapter
                does not match. UnsupportedError, ConfigError: the conversion cannot represent the adapter.
        """
        if os.path.isfile(save_directory):
            raise CheckpointError(f"save_directory {save_directory!s} is a file; pass a directory.")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        self._tuner.check_names(names)
        if not is_main_process:
            return
        args = (safe_serialization, save_embedding_layers, state_dict, path_initial_model_for_weight_conversion)
        save_adapters(self, save_directory, names, *args)

    push_to_hub = push_adapter_to_hub

    get_layer_status = get_layer_status  # PEFT's methods: the functions of peftkit.status, on this model
    get_model_status = get_model_status
    supports_lora_conversion = supports_lora_conversion

    @exclusive
    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load an adapter directory as ``adapter_name`` (all or nothing); an existing name is overwritten in place.
        Returns PEFT's ``(missing_keys, unexpected_keys)`` of the adapter: empty, as any such key raises instead."""
        hub = split_hub_kwargs(kwargs)
        subfolder = kwargs.pop("subfolder", None)
        config = kwargs.pop("config", None) or PeftConfig.from_pretrained(model_id, subfolder=subfolder, **hub)
        self._check_same_kind(config)
        config = self._prepare_config(config, self.get_base_model())
        state = read_weights(model_id, subfolder=subfolder, device=torch_device or "cpu", **hub)
        if kwargs.get("key_mapping") and not config.is_prompt_learning:  # PEFT's renaming of a changed layout
            state = remap_keys(state, kwargs["key_mapping"])
        if adapter_name in self.peft_config:
            self._reload(adapter_name, config, state, is_trainable)
        else:
            config.inference_mode = not is_trainable
            self._attach(adapter_name, config, state, low_cpu_mem_usage)
        cast_adapter_dtype(self.get_base_model(), adapter_name, autocast_adapter_dtype)  # no-op for prompt methods
        if not is_trainable:
            switch_to_eval(self)
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[])

    def _reload(self, adapter_name: str, config: PeftConfig, state: dict[str, torch.Tensor], trainable: bool) -> None:
        live, inner = self.peft_config[adapter_name], self.get_base_model()
        if self._is_prompt_learning:
            check_same_adapter_config(live, config, adapter_name)
            self._tuner.load_state(adapter_name, state)
            self._tuner.encoders[adapter_name].requires_grad_(trainable)
        else:
            reload_adapter(inner, adapter_name, live, config, state)
        live.inference_mode = not trainable
        set_requires_grad(inner, adapter_name, trainable)

    def _attach(
        self, adapter_name: str, config: PeftConfig, state: dict[str, torch.Tensor], low_cpu_mem_usage: bool = False
    ) -> None:
        first = not self.peft_config
        if config.is_prompt_learning:
            prompt.check_task(self.prompt_task)
            if first and not self._is_prompt_learning:
                PromptTuner.install(self, self.get_base_model())
            self._tuner.attach(adapter_name, config, state)
            return
        if first and type(self.base_model) is not tuner_class_for(config) and not self.base_model.mixed_methods:
            self.base_model = tuner_class_for(config)(self.get_base_model(), None, adapter_name)
        active = [adapter_name] if first else self.active_adapters
        self.base_model.check_new_adapter(adapter_name, config)
        record = attach_adapter(
            self.get_base_model(), adapter_name, config, state, active=active, low_cpu_mem_usage=low_cpu_mem_usage
        )
        self.base_model.register_config(adapter_name, config, record.target_names, record.parameter_names)
        if first:
            self.base_model.set_adapter(adapter_name)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        ephemeral_gpu_offload: bool = False,
        low_cpu_mem_usage: bool = False,
        **kwargs: Any,
    ) -> PeftModel:
        """Wrap ``model`` and load the adapter at ``model_id`` (a directory or a hub id) into it.

        The task class is chosen from the adapter's ``task_type`` when called on ``PeftModel`` itself.
        """
        hub = split_hub_kwargs(kwargs)
        subfolder = kwargs.pop("subfolder", None)
        config = config or PeftConfig.from_pretrained(model_id, subfolder=subfolder, **hub)
        target_cls = cls
        if cls is PeftModel and config.task_type is not None:
            if TaskType(config.task_type) not in TASK_CLASSES:
                raise ConfigError(f"task_type={config.task_type!r} has no PeftModel class; import peftkit first.")
            target_cls = TASK_CLASSES[TaskType(config.task_type)]
        replace_existing_adapter(model, adapter_name)
        kwargs.setdefault("key_mapping", getattr(model, "_checkpoint_conversion_mapping", None))  # as PEFT
        wrapper = target_cls(model, None, adapter_name)
        wrapper.load_adapter(
            model_id,
            adapter_name,
            is_trainable=is_trainable,
            config=config,
            subfolder=subfolder,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **hub,
            **kwargs,
        )
        return wrapper

    # -- pass-through -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)
