"""transformers' adapter methods (``add_adapter``, ``load_adapter``, ...) on any ``PreTrainedModel``, by peftkit.

A model gets the methods when its class is swapped, on that instance only, for a cached subclass
``type(cls.__name__, (AdapterModelMixin, cls), ...)``: the class name, module, ``isinstance`` relations,
``forward`` signature and ``state_dict`` keys stay those of the original class, and pickling goes through
:func:`_rebuild` so that ``torch.save`` / ``pickle`` / ``deepcopy`` work. The methods come before
transformers' own in the MRO, so they win over the reference ``peft`` when it is installed, and they never
import it. Adapters are injected in place (keys like ``...q_proj.lora_A.<name>.weight``), exactly where
transformers + PEFT put them, and saved in PEFT's format.

:func:`enable_adapter_methods` swaps one model; :func:`peftkit.patch_transformers` makes every
``PreTrainedModel`` swap itself on its first adapter call.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from peftkit import functional as F
from peftkit.config import PeftConfig
from peftkit.errors import AdapterNameError, ArgumentTypeError, ConfigError, HotswapError, UnsupportedError, UsageError
from peftkit.hotswap import prepare_adapter, swap_adapter_weights
from peftkit.integrations.inference import InferenceMixin
from peftkit.io.hub import HUB_KWARGS, upload_adapter
from peftkit.io.keys import MODEL_PREFIX, add_prefix
from peftkit.io.load import attach_adapter, read_weights
from peftkit.io.save import config_for_saving, write_adapter
from peftkit.io.state import adapter_state_dict
from peftkit.layers.walk import switch_to_eval
from peftkit.targeting import ALL_LINEAR

#: Keyword arguments of transformers' ``load_adapter`` (``LoadStateDictConfig`` fields) that peftkit accepts
#: and has no use for.
_IGNORED_LOAD_KWARGS = frozenset({"device_map", "use_safetensors", "dtype", "torch_dtype", "low_cpu_mem_usage"})
_DOWNLOAD_KEYS = ("cache_dir", "force_download", "proxies", "local_files_only", "token")


def as_peftkit_config(config: Any) -> PeftConfig:
    """A private copy of ``config``: a peftkit config, a reference-PEFT config object, or a dict."""
    if isinstance(config, PeftConfig):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        return PeftConfig.from_dict(dict(config))
    if hasattr(config, "to_dict") and hasattr(config, "peft_type"):
        return PeftConfig.from_dict(config.to_dict())
    raise ArgumentTypeError(f"adapter_config must be a PeftConfig (e.g. peftkit.LoraConfig): {type(config).__name__}.")


class AdapterModelMixin(InferenceMixin):
    """transformers' ``PeftAdapterMixin`` API on peftkit's functional core (calls and ``generate``: the base class).

    State: ``peft_config`` (adapter name -> config, as transformers keeps it), ``_hf_peft_config_loaded`` (read by
    transformers' ``save_pretrained``, gradient checkpointing, Trainer), ``_peftkit_active``, ``_peftkit_hotswap_rank``.
    """

    _peftkit_hotswap_rank: int | None = None

    # -- pickling ---------------------------------------------------------------------------------
    def __reduce_ex__(self, protocol: Any) -> Any:
        # The dynamic subclass cannot be found by name; rebuild it from the original class instead.
        reduced = super().__reduce_ex__(protocol)
        base = type(self).__dict__.get("_peftkit_base_class")
        return reduced if base is None else (_rebuild, (base,), *reduced[2:])

    # -- bookkeeping ------------------------------------------------------------------------------
    def _adapter_configs(self) -> dict[str, PeftConfig]:
        configs = self.__dict__.get("peft_config")
        if not self.__dict__.get("_hf_peft_config_loaded") or not configs:
            raise AdapterNameError("No adapter loaded; call model.add_adapter(config) or model.load_adapter(path).")
        return configs

    def _register(self, name: str, config: PeftConfig, target_names: Sequence[str]) -> None:
        if getattr(config, "target_modules", None) == ALL_LINEAR:
            config.target_modules = set(target_names)  # type: ignore[attr-defined]  # layer-method configs have it (checked above)
        self.__dict__.setdefault("peft_config", {})[name] = config
        self._hf_peft_config_loaded = True

    def _activate(self, names: list[str]) -> None:
        configs = self._adapter_configs()
        frozen = {name for name, config in configs.items() if config.inference_mode}
        F.set_active_adapters(self, names, trainable=True, frozen=frozen)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        self._peftkit_active = names

    # -- adding and loading -----------------------------------------------------------------------
    def add_adapter(self, adapter_config: Any, adapter_name: str | None = None) -> None:
        """Add a freshly initialised adapter and make it the active (trainable) one, as transformers does.

        Args:
            adapter_config: The adapter's config (e.g. ``peftkit.LoraConfig``); layer methods only.
            adapter_name: Its name (default ``"default"``).
        """
        name = adapter_name or "default"
        config = as_peftkit_config(adapter_config)
        if config.is_prompt_learning:
            raise UnsupportedError(
                f"{type(config).__name__} adds virtual tokens, not layers; wrap the model with peftkit.get_peft_model."
            )
        if name in (self.__dict__.get("peft_config") or {}):
            raise AdapterNameError(f"An adapter named {name!r} already exists; choose another name.")
        config.base_model_name_or_path = self.__dict__.get("name_or_path") or None
        record = F.inject_adapter(self, config, name, init_weights=True, active=[name])  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        self._register(name, config, record.target_names)
        self._activate([name])
        self._prepare_for_hotswap(name)

    def load_adapter(
        self,
        peft_model_id: str | os.PathLike | None = None,
        adapter_name: str | None = None,
        peft_config: Any = None,
        adapter_state_dict: dict[str, torch.Tensor] | None = None,
        low_cpu_mem_usage: bool = False,
        is_trainable: bool = False,
        hotswap: bool | Literal["auto"] = "auto",
        local_files_only: bool = False,
        adapter_kwargs: dict[str, Any] | None = None,
        load_config: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Load an adapter (directory, hub id, or ``peft_config`` + ``adapter_state_dict``) as ``adapter_name``.

        The first adapter becomes active; later ones are added inactive. All checks run before the model
        changes (missing / unexpected keys, shapes); a failed load leaves it as it was. With
        ``hotswap=True`` (or ``"auto"`` after :meth:`enable_peft_hotswap`, when the name exists) the
        weights and scalings of the existing adapter are replaced in place (see :mod:`peftkit.hotswap`).

        Args:
            is_trainable: ``False`` loads the adapter frozen and puts the model in eval mode.
            adapter_kwargs, load_config, kwargs: Hub arguments (``revision``, ``token``, ``cache_dir``,
                ``subfolder``, ...) as transformers passes them.
        """
        name = adapter_name or "default"
        configs = self.__dict__.get("peft_config") or {}
        if hotswap == "auto":
            hotswap = self._peftkit_hotswap_rank is not None and name in configs
        if hotswap and name not in configs:
            raise HotswapError(f"hotswap=True needs an adapter named {name!r} already loaded; load it first.")
        if not hotswap and name in configs:
            raise AdapterNameError(f"An adapter named {name!r} is already loaded; pick another name or hotswap=True.")
        config, state = self._read_adapter(
            peft_model_id, peft_config, adapter_state_dict, load_config, adapter_kwargs, kwargs, local_files_only
        )
        if hotswap:
            swap_adapter_weights(self, name, config, state, grow_ranks=False)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
            return _loading_report()
        config.inference_mode = not is_trainable
        mismatched = bool(kwargs.get("ignore_mismatched_sizes"))
        self._attach(name, config, state, ignore_mismatched_sizes=mismatched, low_cpu_mem_usage=low_cpu_mem_usage)
        if not is_trainable:
            switch_to_eval(self)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        return _loading_report()

    def _read_adapter(
        self,
        model_id: str | os.PathLike | None,
        peft_config: Any,
        state: dict[str, torch.Tensor] | None,
        load_config: Any,
        adapter_kwargs: dict[str, Any] | None,
        kwargs: dict[str, Any],
        local_files_only: bool,
    ) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
        unknown = sorted(set(kwargs) - HUB_KWARGS - _IGNORED_LOAD_KWARGS - {"subfolder", "ignore_mismatched_sizes"})
        if unknown:
            raise ArgumentTypeError(f"load_adapter() got unexpected keyword arguments: {', '.join(unknown)}.")
        model_id = model_id or getattr(load_config, "pretrained_model_name_or_path", None)
        if model_id is None and (peft_config is None or state is None):
            raise ConfigError("Pass a directory or hub id, or both peft_config and adapter_state_dict.")
        hub = {k: v for k, v in (getattr(load_config, "download_kwargs", None) or {}).items() if k in _DOWNLOAD_KEYS}
        for source in (adapter_kwargs or {}, kwargs):
            hub.update({k: v for k, v in source.items() if k in HUB_KWARGS or k == "subfolder"})
        hub = {k: v for k, v in hub.items() if v is not None and v != ""}
        if local_files_only:
            hub["local_files_only"] = True
        subfolder = hub.pop("subfolder", None)
        if peft_config is not None:
            config = as_peftkit_config(peft_config)
        else:
            config = PeftConfig.from_pretrained(model_id, subfolder=subfolder, **hub)  # type: ignore[arg-type]  # set when peft_config is not (checked above)
        if state is None:
            state = read_weights(model_id, subfolder=subfolder, **hub)  # type: ignore[arg-type]  # set when the state is not (checked above)
        return config, state

    def _attach(self, name: str, config: PeftConfig, state: dict[str, torch.Tensor], **options: bool) -> None:
        first = not self.__dict__.get("peft_config")
        active = [name] if first else self.active_adapters()
        names = attach_adapter(self, name, config, state, active=active, **options).target_names  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        self._register(name, config, names)
        if first:
            self._activate([name])
        self._prepare_for_hotswap(name)

    # -- hot-swap ---------------------------------------------------------------------------------
    def enable_peft_hotswap(
        self, target_rank: int = 128, check_compiled: Literal["error", "warn", "ignore"] = "error"
    ) -> None:
        """Let later ``load_adapter(..., hotswap=True)`` swap in adapters of any rank ``<= target_rank``.

        Call before the first adapter is loaded: every adapter added from then on is padded with zeros to
        ``target_rank`` and holds its scalings as tensors, so swaps never change shapes (no recompilation).

        Raises:
            HotswapError: adapters are already loaded and ``check_compiled="error"``.
        """
        if check_compiled not in ("error", "warn", "ignore"):
            raise HotswapError(f"check_compiled must be 'error', 'warn' or 'ignore', got {check_compiled!r}.")
        if int(target_rank) < 1:
            raise HotswapError(f"target_rank must be a positive integer, got {target_rank!r}.")
        loaded = sorted(self.__dict__.get("peft_config") or {})
        if loaded and check_compiled == "error":
            raise HotswapError(
                f"Call enable_peft_hotswap before loading the first adapter (loaded: {loaded}); or pass "
                "check_compiled='warn' to pad the loaded adapters now."
            )
        if loaded and check_compiled == "warn":
            import warnings

            warnings.warn("enable_peft_hotswap after adapters were loaded: padding them now.", stacklevel=2)
        self._peftkit_hotswap_rank = int(target_rank)
        for name in loaded:
            self._prepare_for_hotswap(name)

    def _prepare_for_hotswap(self, name: str) -> None:
        if self._peftkit_hotswap_rank is not None:
            prepare_adapter(self, self.__dict__.get("peft_config"), name, self._peftkit_hotswap_rank)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)

    # -- switching --------------------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make ``adapter_name`` (a name or a list) the active adapter(s); only they compute and train."""
        configs = self._adapter_configs()
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        missing = [n for n in names if n not in configs]
        if missing or not names:
            raise AdapterNameError(f"Adapter(s) {missing or names} not found; loaded: {sorted(configs)}.")
        self._activate(names)

    def enable_adapters(self) -> None:
        """Turn the adapters back on: exactly what trained before :meth:`disable_adapters` trains again."""
        self._adapter_configs()
        F.enable_adapters(self, True)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)

    def disable_adapters(self) -> None:
        """Turn every adapter off: the model computes exactly like its base model and nothing trains."""
        self._adapter_configs()
        F.enable_adapters(self, False)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)

    def active_adapters(self) -> list[str]:
        """Names of the active adapters."""
        self._adapter_configs()
        return list(self.__dict__.get("_peftkit_active") or [])

    def delete_adapter(self, adapter_names: str | list[str]) -> None:
        """Remove adapter(s) and their layers; deleting the last one gives back the plain model."""
        configs = self._adapter_configs()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [n for n in names if n not in configs]
        if missing:
            raise AdapterNameError(f"Adapter(s) {missing} not found; loaded: {sorted(configs)}.")
        frozen = {name for name, config in configs.items() if config.inference_mode}
        for name in names:
            remaining = [n for n in configs if n != name]
            status = F.delete_adapter(self, name, frozen=frozen, remaining=remaining)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
            del configs[name]
            self._peftkit_active = list(status.active)
        if not configs:
            del self.__dict__["peft_config"]
            self._hf_peft_config_loaded = False
            self._peftkit_active = []

    # -- state and files --------------------------------------------------------------------------
    def get_adapter_state_dict(self, adapter_name: str | None = None, state_dict: dict | None = None) -> dict:
        """The adapter's tensors keyed as in the file (no ``base_model.model.``), from ``state_dict`` if given."""
        configs = self._adapter_configs()
        name = adapter_name or self.active_adapters()[0]
        if name not in configs:
            raise AdapterNameError(f"Adapter {name!r} not found; loaded: {sorted(configs)}.")
        return adapter_state_dict(self, name, configs[name], state_dict=state_dict)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)

    def save_adapter(
        self,
        directory: str | os.PathLike,
        adapter_name: str,
        safe_serialization: bool = True,
        save_embedding_layers: bool | str = "auto",
        save_peft_format: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write one adapter in PEFT's format; values from ``state_dict`` (a full, gathered one) when given."""
        configs = self._adapter_configs()
        state = adapter_state_dict(self, adapter_name, configs[adapter_name], save_embedding_layers, state_dict)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        if save_peft_format:
            state = add_prefix(state, MODEL_PREFIX)
        config = config_for_saving(configs[adapter_name], self)  # type: ignore[arg-type]  # the mixin is only ever on a PreTrainedModel (an nn.Module)
        write_adapter(directory, config, state, safe_serialization)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Adapter-only save: the active adapter's ``adapter_config.json`` + ``adapter_model.safetensors``.

        With ``selected_adapters=[...]`` those adapters are written in PEFT's layout instead (``default`` in
        ``save_directory``, others in subfolders). Without adapters this is transformers' full save.
        """
        if not self.__dict__.get("_hf_peft_config_loaded"):
            return super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]  # from the PreTrainedModel this mixin sits on
        if os.path.isfile(save_directory):
            raise UsageError(f"save_directory {save_directory!s} is a file; pass a directory.")
        names = ("safe_serialization", "save_embedding_layers", "save_peft_format", "state_dict")
        options = {k: kwargs[k] for k in names if k in kwargs}
        selected = kwargs.get("selected_adapters")
        if not kwargs.get("is_main_process", True):
            return None
        if selected is not None:
            for name in selected:
                sub = save_directory if name == "default" else os.path.join(save_directory, name)
                self.save_adapter(sub, name, **options)
        else:
            active = self.active_adapters()
            if len(active) != 1:
                raise AdapterNameError(
                    f"save_pretrained writes the active adapter, but {len(active)} are active ({active}); call "
                    "set_adapter(name) first or pass selected_adapters=[...]."
                )
            self.save_adapter(save_directory, active[0], **options)
        if kwargs.get("push_to_hub"):
            repo_id = kwargs.get("repo_id") or os.path.basename(os.path.abspath(save_directory))
            self.push_to_hub(repo_id, token=kwargs.get("token"))
        return None

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, **kwargs: Any) -> Any:
        """Upload exactly the adapter files of :meth:`save_pretrained` to ``repo_id`` in one commit."""
        if not self.__dict__.get("_hf_peft_config_loaded"):
            return super().push_to_hub(repo_id, commit_message=commit_message, **kwargs)  # type: ignore[misc]  # from the PreTrainedModel this mixin sits on
        save_kwargs = {k: kwargs.pop(k) for k in ("safe_serialization", "selected_adapters") if k in kwargs}
        for unused in ("max_shard_size", "tags", "safe_serialization"):
            kwargs.pop(unused, None)
        return upload_adapter(
            lambda d: self.save_pretrained(d, **save_kwargs), repo_id, commit_message=commit_message, **kwargs
        )


def _loading_report() -> Any:
    """What transformers' ``load_adapter`` returns (an empty ``LoadStateDictInfo``: checks raise instead)."""
    try:
        from transformers.utils.loading_report import LoadStateDictInfo
    except ImportError:  # transformers < 5 returned nothing
        return None
    return LoadStateDictInfo(
        missing_keys=set(),
        unexpected_keys=set(),
        mismatched_keys=set(),
        error_msgs=[],
        conversion_errors={},
        skipped_pp_keys=set(),
    )


_CLASSES: dict[type, type] = {}


def adapter_model_class(cls: type) -> type:
    """The cached subclass of ``cls`` with the adapter methods (same name, module and qualname as ``cls``)."""
    if issubclass(cls, AdapterModelMixin):
        return cls
    if cls not in _CLASSES:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_peftkit_base_class": cls,
        }
        _CLASSES[cls] = type(cls.__name__, (AdapterModelMixin, cls), namespace)
    return _CLASSES[cls]


def _rebuild(cls: type) -> Any:
    """Unpickling entry point: an empty instance of ``cls``'s adapter subclass (state is set afterwards)."""
    return object.__new__(adapter_model_class(cls))


def enable_adapter_methods(model: nn.Module) -> nn.Module:
    """Give ``model`` (a transformers ``PreTrainedModel``) peftkit's adapter methods, in place; returns it."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ArgumentTypeError(f"Adapter methods need a transformers PreTrainedModel, got {type(model).__name__}.")
    if not isinstance(model, AdapterModelMixin):
        model.__class__ = adapter_model_class(type(model))
    return model


def has_adapters(model: nn.Module) -> bool:
    """``True`` for a model with peftkit adapters added in place (not a PeftModel)."""
    return isinstance(model, AdapterModelMixin) and bool(model.__dict__.get("_hf_peft_config_loaded"))
