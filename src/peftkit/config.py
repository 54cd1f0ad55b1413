"""Config base classes and their JSON form (``adapter_config.json``).

A config is a plain dataclass. Its JSON form uses PEFT's field names exactly; a file may carry keys that
this version does not know (written by a newer PEFT): they are dropped with a warning naming them.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from packaging.version import InvalidVersion, Version

from peftkit.config_checks import check_field_types, check_nesting, check_size
from peftkit.errors import ConfigError, ConfigKeysError
from peftkit.types import PeftType, TaskType

CONFIG_NAME = "adapter_config.json"
#: The version written in ``peft_version``: the PEFT file-format release that peftkit mirrors.
PEFT_FORMAT_VERSION = "0.21.2"
#: What a new config stamps into ``peft_version`` (PEFT's module-level name; read at each construction).
__version__ = PEFT_FORMAT_VERSION

_C = TypeVar("_C", bound="PeftConfig")

#: ``peft_type`` -> config class, filled by :mod:`peftkit.registry` from the method specs (the registry sits
#: above the methods, whose configs build on this module, so it hands the classes down instead of this module
#: importing it).
CONFIG_CLASSES: dict[str, type[PeftConfig]] = {}


def config_class_for(peft_type: str) -> type[PeftConfig]:
    """The config class registered for ``peft_type``.

    Raises:
        ConfigError: no method of that name is registered.
    """
    try:
        return CONFIG_CLASSES[str(getattr(peft_type, "value", peft_type))]
    except KeyError:
        known = ", ".join(CONFIG_CLASSES)
        raise ConfigError(f"peft_type={peft_type!r} is not implemented by peftkit; known methods: {known}.") from None


def _jsonable(value: Any) -> Any:
    """Turn a config value into what PEFT writes: sets become (sorted) lists, enums their string, sub-configs dicts."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a nested sub-config (BdLoraConfig...)
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _get_commit_hash(package: str) -> str | None:
    """The git commit ``package`` was installed from (``pip install git+...@<hash>``), read from the
    distribution's PEP 610 ``direct_url.json``; ``None`` when it was not installed from a VCS (or is absent)."""
    try:
        text = importlib.metadata.distribution(package).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    vcs_info = json.loads(text).get("vcs_info") if text else None
    return vcs_info.get("commit_id") if isinstance(vcs_info, dict) else None


def current_peft_version() -> str:
    """The ``peft_version`` a new config records: :data:`__version__`, plus ``@<commit>`` for a development
    release (``0.15.0.dev7@abcdef0``, or ``@UNKNOWN`` when the commit cannot be found), as a dev version alone
    does not say which code wrote a file."""
    version = __version__
    try:
        is_dev = Version(version).is_devrelease
    except InvalidVersion:
        is_dev = False
    if not is_dev:
        return version
    try:
        commit = _get_commit_hash("peftkit")
    except Exception as exc:  # a bookkeeping field must never stop a config from being built
        warnings.warn(
            f"Could not read the git commit of this development install ({exc!r}); peft_version is recorded as "
            f"{version}@UNKNOWN.",
            stacklevel=3,
        )
        commit = None
    return f"{version}@{commit or 'UNKNOWN'}"


@dataclass
class PeftConfig:
    """Fields common to every adapter method.

    Attributes:
        peft_type: Which method this config describes (set by each subclass).
        task_type: Which ``PeftModelFor*`` class wraps the model; ``None`` for a plain ``PeftModel``.
        inference_mode: ``True`` freezes the adapter (loaded for inference).
        base_model_name_or_path: Hub id or local path of the base model, filled in when saving.
        revision: Revision of the base model on the hub.
        auto_mapping: ``{"base_model_class", "parent_library"}`` when ``task_type`` is ``None``.
        peft_version: Informational; the format version that wrote the file.
    """

    peft_type: PeftType | str | None = field(default=None)
    task_type: TaskType | str | None = field(default=None)
    inference_mode: bool = field(default=False)
    base_model_name_or_path: str | None = field(default=None)
    revision: str | None = field(default=None)
    auto_mapping: dict | None = field(default=None)
    peft_version: str | None = field(default=None)

    #: Fields that exist in PEFT's format but whose non-default values peftkit does not implement.
    unsupported_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.task_type is not None and not isinstance(self.task_type, TaskType):
            try:
                self.task_type = TaskType(self.task_type)
            except ValueError:
                allowed = ", ".join(t.value for t in TaskType)
                raise ConfigError(f"task_type={self.task_type!r} is not a known task; use one of: {allowed}.") from None
        if self.peft_version is None:
            self.peft_version = current_peft_version()
        self._check_unsupported()

    def _check_unsupported(self) -> None:
        defaults = {f.name: f for f in dataclasses.fields(self)}
        for name in self.unsupported_fields:
            f = defaults[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(self, name)
            if value != default and not (value in (None, {}, []) and default in (None, {}, [])):
                raise ConfigError(
                    f"{type(self).__name__}.{name}={value!r} is a PEFT feature that peftkit does not implement for "
                    f"{type(self).__name__}; leave {name} at its default ({default!r})."
                )

    # -- properties PEFT code relies on -------------------------------------------------------------
    @property
    def is_prompt_learning(self) -> bool:
        """``True`` for prompt methods (prompt tuning, prefix tuning, P-tuning)."""
        return False

    @property
    def is_adaption_prompt(self) -> bool:
        """Always ``False``: adaption prompts are not part of peftkit."""
        return False

    # -- dict and JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict with PEFT's field names (sets as sorted lists)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` atomically (``inference_mode`` is kept as is)."""
        from peftkit.io.files import atomic_write_text

        if os.path.isfile(save_directory):
            raise ConfigError(f"save_pretrained needs a directory, but {save_directory!s} is a file.")
        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        data.update(kwargs)
        atomic_write_text(os.path.join(save_directory, CONFIG_NAME), json.dumps(data, indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
        """Build the right config class for ``data["peft_type"]`` (or ``cls`` itself), dropping unknown keys
        with a warning that names them."""
        target: type[PeftConfig] = cls
        peft_type = data.get("peft_type")
        if peft_type is not None:
            target = config_class_for(peft_type)
            if not issubclass(target, cls):
                raise ConfigError(f"peft_type={peft_type!r} describes a {target.__name__}, not a {cls.__name__}.")
        known = {f.name for f in dataclasses.fields(target) if f.init}
        check_nesting(target.__name__, {k: v for k, v in data.items() if k in known})
        unknown = sorted(set(data) - known)
        if unknown and peft_type is None:
            raise ConfigKeysError(
                f"This is not a {target.__name__}: it has no 'peft_type' and holds keys no config has ("
                f"{', '.join(unknown)}). Pass the adapter_config.json that save_pretrained wrote."
            )
        if unknown:
            warnings.warn(
                f"Unexpected keys in the {target.__name__} were dropped (written by a newer PEFT version?): "
                f"{', '.join(unknown)}.",
                stacklevel=2,
            )
        try:
            return target(**{k: v for k, v in data.items() if k in known})  # type: ignore[return-value]  # from_dict builds the registered subclass of cls (checked above)
        except TypeError as exc:
            raise ConfigError(f"Cannot build {target.__name__} from {data!r}: {exc}") from exc

    @classmethod
    def from_peft_type(cls, **kwargs: Any) -> PeftConfig:
        """PEFT's name for :meth:`from_dict` with keyword arguments."""
        return cls.from_dict(kwargs)

    @classmethod
    def from_json_file(cls, path_json_file: str | os.PathLike) -> dict[str, Any]:
        """Read a config file into a dict, with a clear error for unreadable or non-object JSON."""
        try:
            with open(path_json_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path_json_file!s} is not valid JSON ({exc}); re-save the adapter.") from exc
        except RecursionError:
            raise ConfigError(f"{path_json_file!s} nests lists or objects too deeply to be a config.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path_json_file!s} must hold a JSON object, not {type(data).__name__}.")
        data.pop("runtime_config", None)  # PEFT's runtime-only LoRA options: never part of an adapter's config
        return data

    @classmethod
    def from_pretrained(
        cls: type[_C], pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> _C:
        """Load ``adapter_config.json`` from a local directory or a hub repo.

        Args:
            pretrained_model_name_or_path: A directory, or a hub id resolved through huggingface_hub.
            subfolder: Sub-directory that holds the adapter (another adapter of a multi-adapter save).
            **kwargs: ``revision``, ``cache_dir``, ``token``, ... for the hub; other keys override fields.
        """
        from peftkit.io.hub import HUB_KWARGS, resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, subfolder=subfolder, **hub_kwargs)
        if path is None:
            raise ConfigError(
                f"Can't find '{CONFIG_NAME}' at '{pretrained_model_name_or_path}'"
                + (f" (subfolder {subfolder!r})" if subfolder else "")
                + "; pass a directory saved by save_pretrained or a hub id."
            )
        data = cls.from_json_file(path)
        data.update(kwargs)
        return cls.from_dict(data)


@dataclass
class PromptLearningConfig(PeftConfig):
    """Base of the prompt methods: virtual tokens prepended to the input or to every layer's keys/values.

    Attributes:
        num_virtual_tokens: Number of virtual tokens (> 0).
        token_dim: Hidden size of the base model (filled in from the model config when ``None``).
        num_transformer_submodules: 1 for decoder-only, 2 for encoder-decoder models.
        num_attention_heads: Number of attention heads (filled in from the model config).
        num_layers: Number of transformer layers (filled in from the model config).
        modules_to_save: Extra modules trained and saved in full (e.g. a classifier head).
    """

    num_virtual_tokens: int | None = field(default=None)
    token_dim: int | None = field(default=None)
    num_transformer_submodules: int | None = field(default=None)
    num_attention_heads: int | None = field(default=None)
    num_layers: int | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.num_virtual_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise ConfigError(f"{type(self).__name__}.num_virtual_tokens must be a positive integer, got {n!r}.")
        for name in ("num_virtual_tokens", "token_dim", "num_transformer_submodules", "num_attention_heads",
                     "num_layers", "encoder_hidden_size"):  # fmt: skip
            check_size(type(self).__name__, name, getattr(self, name, None), allow_none=True)

    @property
    def is_prompt_learning(self) -> bool:
        """``True``: prompt methods add virtual tokens instead of adapter layers."""
        return True
