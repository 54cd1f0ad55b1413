"""The adapters of a ``PeftModel`` whose method is a prompt method (prompt tuning, prefix tuning, P-tuning).

Layout (PEFT's, so names and files match): ``PeftModel.base_model`` is the user's model itself, unchanged
except for ``modules_to_save`` wrappers, and ``PeftModel.prompt_encoder`` is a ``ModuleDict`` with one prompt
encoder per adapter. :class:`PromptTuner` plays for these adapters the role that
:class:`~peftkit.tuner.TunerModel` plays for layer methods (configs, active adapter, add / load / delete,
state dict); ``PeftModel`` reaches it through the same calls.

On disk a prompt adapter is ``{"prompt_embeddings": (T, width)}`` -- the encoder's output for every virtual
token -- plus its ``modules_to_save`` copies under ``base_model.<module path>`` (no ``.model`` here, since
``base_model`` is the user's model).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from peftkit import functional as F
from peftkit.config import PromptLearningConfig
from peftkit.errors import AdapterNameError, CheckpointError, ConfigError
from peftkit.io.keys import add_prefix, strip_prefix
from peftkit.io.state import adapter_state_dict, check_and_load
from peftkit.layers.routing import check_adapter_name
from peftkit.layers.state import (
    AdapterStatus,
    first_status,
    status_after_add,
    status_after_delete,
    status_after_requires_grad,
    status_after_set,
    trains,
)
from peftkit.methods.prompt.cache import build_cache, check_fit, forward_cache_argument
from peftkit.methods.prompt.dimensions import fill_dimensions
from peftkit.methods.prompt.encoder import PromptEncoderBase
from peftkit.methods.prompt.layout import PrefixLayout, derive_layout
from peftkit.methods.spec import method_of

#: The single key of a prompt adapter's own weights in the file.
PROMPT_KEY = "prompt_embeddings"
#: A Trainer checkpoint's side file with an encoder that the adapter file cannot restore (P-tuning's MLP /
#: LSTM, prefix tuning's projection): the adapter files stay exactly PEFT's.
TRAINING_STATE_NAME = "prompt_encoder_training_state.safetensors"
#: Prefix of the ``modules_to_save`` keys of a prompt adapter in the file.
PROMPT_MODEL_PREFIX = "base_model."


def find_word_embeddings(model: nn.Module) -> nn.Module:
    """The model's input token embedding (``get_input_embeddings()``, else the vocab-sized ``nn.Embedding``)."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if isinstance(embeddings, nn.Module):
        return embeddings
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and (vocab is None or module.num_embeddings == vocab):
            return module
    raise ConfigError(
        f"Cannot find the input token embeddings of {type(model).__name__}; prompt tuning and P-tuning prepend "
        "virtual token embeddings to them. Give the model a get_input_embeddings() method."
    )


#: Most parameters a prompt encoder may have (2**34: 64 GiB in float32, far beyond any real prompt encoder).
MAX_ENCODER_PARAMETERS = 2**34


def check_encoder_size(config: PromptLearningConfig, encoder_class: Any) -> None:
    """Build the encoder on the meta device (no memory) and refuse sizes no machine could hold.

    Raises:
        ConfigError: the encoder would have more than :data:`MAX_ENCODER_PARAMETERS` parameters.
    """
    with torch.device("meta"):
        probe = encoder_class(config, None, False)
    count = sum(p.numel() for p in probe.parameters())
    if count > MAX_ENCODER_PARAMETERS:
        raise ConfigError(
            f"This {config.peft_type} config asks for a prompt encoder of {count:,} parameters (num_virtual_tokens="
            f"{config.num_virtual_tokens}, token_dim={config.token_dim}, "
            f"encoder_hidden_size={getattr(config, 'encoder_hidden_size', None)}); reduce these sizes."
        )


def table_config(config: PromptLearningConfig, encoder_class: Any) -> PromptLearningConfig:
    """The config to build a *loaded* encoder from: in table form whenever the file holds only the encoder's
    output (P-tuning, prefix tuning with projection), also for a trainable load.

    PEFT loads such a file with ``is_trainable=True`` by putting the saved output where the encoder's *input*
    goes and running a freshly initialised MLP / LSTM on it, so its outputs silently differ from the saved
    adapter's. Here the saved output itself becomes the trainable table: the loaded adapter computes exactly what
    was saved, and training continues on the virtual-token vectors directly (a warning says so).
    """
    if config.inference_mode or encoder_class.output_is_parameter(config):
        return config
    warnings.warn(
        f"A saved {config.peft_type} adapter holds only its encoder's output, not the encoder; it is loaded as a "
        "trainable table of virtual-token vectors (outputs exactly as saved; the reparameterisation is gone).",
        stacklevel=5,
    )
    table = copy.copy(config)
    table.inference_mode = True
    return table


class PromptTuner:
    """Configs, encoders and the active adapter of a prompt-method ``PeftModel``.

    Args:
        owner: The ``PeftModel``; its ``base_model`` is the user's model and ``prompt_encoder`` the encoders.
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.peft_config: dict[str, PromptLearningConfig] = {}
        self.status = AdapterStatus()
        self._word_embeddings: nn.Module | None = None
        self._prefix_layout: PrefixLayout | None = None

    @classmethod
    def install(cls, peft_model: Any, model: nn.Module) -> PromptTuner:
        """Turn ``peft_model`` (without adapters yet) into a prompt-method wrapper of ``model``."""
        peft_model.base_model = model
        peft_model.prompt_encoder = nn.ModuleDict()
        tuner = cls(peft_model)
        peft_model._prompt_tuner = tuner
        return tuner

    # -- views ---------------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The user's model (a transformers model: ``generate``, ``config``...)."""
        return self.owner.base_model

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.owner.prompt_encoder

    @property
    def active_adapters(self) -> list[str]:
        return list(self.status.active)

    @property
    def active_adapter(self) -> str | list[str]:
        active = self.active_adapters
        return active[0] if len(active) == 1 else active

    @property
    def disabled(self) -> bool:
        return self.status.disabled

    def frozen_adapters(self) -> set[str]:
        """Adapters loaded for inference: activating them does not make them train."""
        return {name for name, config in self.peft_config.items() if config.inference_mode}

    @property
    def word_embeddings(self) -> nn.Module:
        if self._word_embeddings is None:
            self._word_embeddings = find_word_embeddings(self.model)
        return self._word_embeddings

    def active(self) -> tuple[PromptLearningConfig, PromptEncoderBase]:
        """The active adapter's config and encoder."""
        names = self.active_adapters
        if len(names) != 1:
            raise AdapterNameError(f"Prompt methods run exactly one active adapter, got {names}; call set_adapter.")
        return self.peft_config[names[0]], self.encoders[names[0]]  # type: ignore[return-value]  # the encoders dict holds PromptEncoderBase modules

    def check_names(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self.peft_config]
        if missing:
            raise AdapterNameError(f"Adapter(s) {missing} not found; present: {sorted(self.peft_config)}.")

    # -- adding and loading --------------------------------------------------------------------------
    def _prepare(self, adapter_name: str, config: PromptLearningConfig) -> tuple[PromptLearningConfig, type]:
        """Validate the name and the model, fill in the model dimensions; returns the config and encoder class."""
        check_adapter_name(adapter_name, list(self.peft_config))
        encoder_class: Any = method_of(config).prompt_encoder
        if encoder_class.kv_prefix:
            config = fill_dimensions(config, self.model, True, self.prefix_layout.widest())
            self._check_prefix_support(config)
        else:
            config = fill_dimensions(config, self.model, False)
        check_encoder_size(config, encoder_class)
        return config, encoder_class

    @property
    def prefix_layout(self) -> PrefixLayout:
        """The model's key/value cache layout, observed once (a one-token forward) and kept.

        Raises:
            UnsupportedError: the model's forward takes no cache.
            ConfigError: the model's cache cannot hold a prefix (see :func:`derive_layout`).
        """
        if self._prefix_layout is None:
            self._prefix_layout = derive_layout(self.model, forward_cache_argument(self.model))
        return self._prefix_layout

    def _check_prefix_support(self, config: PromptLearningConfig) -> None:
        layout = self.prefix_layout
        wanted = 2 if layout.encoder_decoder else 1
        if config.num_transformer_submodules != wanted:
            kind = "encoder-decoder" if layout.encoder_decoder else "decoder-only or encoder-only"
            raise ConfigError(
                f"Prefix tuning on a {kind} model needs num_transformer_submodules={wanted} "
                f"(got {config.num_transformer_submodules}); set task_type "
                f"{'SEQ_2_SEQ_LM' if wanted == 2 else 'CAUSAL_LM or SEQ_CLS'}."
            )
        if config.token_dim % config.num_attention_heads:  # type: ignore[operator]  # prompt dimensions are filled in from the model config before this runs
            raise ConfigError(
                f"token_dim={config.token_dim} is not a multiple of num_attention_heads={config.num_attention_heads}."
            )
        if any(getattr(m, "gradient_checkpointing", False) for m in self.model.modules()):
            raise ConfigError("Prefix tuning does not work with gradient checkpointing; disable it on the model.")
        check_fit(config, layout, type(self.model).__name__)

    def _embeddings_for(self, encoder_class: Any) -> nn.Module | None:
        return None if encoder_class.kv_prefix else self.word_embeddings

    def inject_adapter(self, adapter_name: str, config: PromptLearningConfig, init_weights: bool = True) -> None:
        """Add a freshly initialised prompt adapter; the active adapter stays unless this is the first one."""
        config, encoder_class = self._prepare(adapter_name, config)
        encoder = encoder_class(config, self._embeddings_for(encoder_class), init_weights)
        F.add_modules_to_save(self.model, config.modules_to_save, adapter_name)
        self._register(adapter_name, config, encoder, trainable=False)

    def attach(self, adapter_name: str, config: PromptLearningConfig, state: dict[str, torch.Tensor]) -> None:
        """Add ``adapter_name`` from a saved state dict (file keys), checking everything before changing the model.

        Raises:
            ConfigError: a trainable load of an adapter whose file holds only the encoder's output.
            CheckpointError: ``prompt_embeddings`` missing or of the wrong shape, or bad ``modules_to_save`` keys.
        """
        config, encoder_class = self._prepare(adapter_name, config)
        encoder = encoder_class(table_config(config, encoder_class), self._embeddings_for(encoder_class), False)
        record = F.add_modules_to_save(self.model, config.modules_to_save, adapter_name)
        try:
            self._load(adapter_name, config, encoder, state)
        except BaseException:
            record.undo(self.model)
            raise
        self._register(adapter_name, config, encoder, trainable=not config.inference_mode)

    def load_state(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Overwrite the existing adapter ``adapter_name`` from a state dict with file keys."""
        self.check_names([adapter_name])
        self._load(adapter_name, self.peft_config[adapter_name], self.encoders[adapter_name], state)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs

    def _load(
        self,
        adapter_name: str,
        config: PromptLearningConfig,
        encoder: PromptEncoderBase,
        state: dict[str, torch.Tensor],
    ) -> None:
        if not encoder.table and not encoder.output_is_parameter(config):
            raise ConfigError(
                f"A saved {config.peft_type} adapter holds only its encoder's output, not the encoder, so it cannot "
                "be loaded into a trainable encoder; load it with is_trainable=False (inference)."
            )
        saved = state.get(PROMPT_KEY)
        expected = tuple(encoder.embedding.weight.shape)
        if saved is None or tuple(saved.shape) != expected or not saved.is_floating_point():
            found = "missing" if saved is None else f"of shape {tuple(saved.shape)} and dtype {saved.dtype}"
            raise CheckpointError(
                f"The checkpoint's {PROMPT_KEY!r} is {found}; adapter {adapter_name!r} needs shape {expected} "
                "(virtual tokens x width), floating point. Check the base model and adapter_config.json."
            )
        rest = {strip_prefix(k, PROMPT_MODEL_PREFIX): v for k, v in state.items() if k != PROMPT_KEY}
        check_and_load(self.model, adapter_name, config, rest)
        encoder.load_output(saved)

    def _register(
        self, adapter_name: str, config: PromptLearningConfig, encoder: PromptEncoderBase, trainable: bool
    ) -> None:
        """Store the encoder and config; the first adapter becomes active (and trains unless for inference), a
        later one trains only if ``trainable`` (a load with ``is_trainable=True``)."""
        param = next(self.model.parameters(), None)
        self.encoders[adapter_name] = encoder.to(param.device) if param is not None else encoder
        self.peft_config[adapter_name] = config
        if not self.status.active:
            self.model.requires_grad_(False)
            self._apply(first_status(adapter_name, not config.inference_mode))
        else:
            self._apply(status_after_add(self.status, adapter_name, trainable))

    def _apply(self, status: AdapterStatus) -> None:
        """Record ``status`` and set ``requires_grad`` of the encoders and modules_to_save copies from it (by
        the one rule, :func:`~peftkit.layers.state.trains`)."""
        F.apply_model_status(self.model, status)
        self.status = status
        for name, encoder in self.encoders.items():
            encoder.requires_grad_(trains(name, status))

    # -- switching and deleting ----------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter; it trains unless ``inference_mode`` or loaded frozen."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if len(names) != 1:
            raise AdapterNameError(f"Prompt methods run exactly one active adapter; got {names}.")
        self.check_names(names)
        self._apply(status_after_set(self.status, names, inference_mode, self.frozen_adapters()))

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Let ``adapter_names`` train (or stop training), active or not."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.check_names(names)
        self._apply(status_after_requires_grad(self.status, names, requires_grad))

    def set_trainable_adapters(self, names: Sequence[str]) -> None:
        """Make exactly ``names`` the trainable adapters (the Trainer restores a checkpoint's choice)."""
        self.check_names(names)
        self._apply(replace(self.status, trainable=frozenset(names)))

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove ``adapter_name``; what stays active is :func:`~peftkit.layers.state.status_after_delete`'s."""
        self.check_names([adapter_name])
        remaining = [n for n in self.peft_config if n != adapter_name]
        frozen = self.frozen_adapters()
        if adapter_name in F.adapter_names_in(self.model):
            F.delete_adapter(self.model, adapter_name, frozen=frozen, remaining=remaining)
        del self.encoders[adapter_name]
        del self.peft_config[adapter_name]
        self._apply(status_after_delete(self.status, adapter_name, remaining, frozen))

    def enable_adapter_layers(self) -> None:
        """Turn the prompt (and modules_to_save copies) back on; what trained before trains again."""
        self._apply(replace(self.status, disabled=False))

    def disable_adapter_layers(self) -> None:
        """Turn the prompt off: the model computes like its base and nothing trains."""
        self._apply(replace(self.status, disabled=True))

    # -- what the model consumes ---------------------------------------------------------------------
    def prompts(self, batch_size: int) -> torch.Tensor:
        """The active adapter's virtual token embeddings for a batch: ``(batch, T, token_dim)``."""
        _, encoder = self.active()
        return encoder.all_tokens().unsqueeze(0).expand(batch_size, -1, -1)

    def past_key_values(self, batch_size: int) -> object:
        """The active prefix as the model's cache object (see :mod:`peftkit.methods.prompt.cache`)."""
        config, encoder = self.active()
        flat = encoder.all_tokens()[: config.num_virtual_tokens]
        dtype = getattr(self.model, "dtype", None)
        flat = flat.to(dtype) if isinstance(dtype, torch.dtype) else flat
        return build_cache(flat.unsqueeze(0).expand(batch_size, -1, -1), config, self.prefix_layout)

    # -- training state (Trainer checkpoints) ---------------------------------------------------------
    def save_training_state(self, adapter_name: str, directory: str) -> None:
        """Write the whole encoder of ``adapter_name`` (e.g. P-tuning's MLP) to ``directory``/
        :data:`TRAINING_STATE_NAME` when the adapter file alone cannot restore it; else write nothing."""
        encoder = self.encoders[adapter_name]
        if encoder.table or encoder.output_is_parameter(self.peft_config[adapter_name]):  # type: ignore[operator]  # nn.Module.__getattr__ types submodules and dicts as Tensor | Module
            return
        from peftkit.io.files import save_tensors

        save_tensors(dict(encoder.state_dict()), os.path.join(directory, TRAINING_STATE_NAME))

    def load_training_state(self, adapter_name: str, state: dict[str, torch.Tensor], directory: str) -> None:
        """Restore ``adapter_name`` in place from a checkpoint: its ``modules_to_save`` from ``state`` (file keys)
        and the whole encoder from :data:`TRAINING_STATE_NAME` when ``directory`` has one.

        Raises:
            CheckpointError: the encoder state does not fit this adapter's encoder (keys or shapes).
        """
        path = os.path.join(directory, TRAINING_STATE_NAME)
        if not os.path.isfile(path):
            self.load_state(adapter_name, state)
            return
        from peftkit.io.files import load_tensors

        encoder, saved = self.encoders[adapter_name], load_tensors(path)
        own = encoder.state_dict()
        wrong = sorted(set(own) ^ set(saved)) + [k for k in own if k in saved and own[k].shape != saved[k].shape]
        if wrong:
            raise CheckpointError(
                f"{path} does not fit adapter {adapter_name!r}'s encoder (keys or shapes: {wrong[:5]}); was the "
                "checkpoint written with the same config?"
            )
        rest = {strip_prefix(k, PROMPT_MODEL_PREFIX): v for k, v in state.items() if k != PROMPT_KEY}
        check_and_load(self.model, adapter_name, self.peft_config[adapter_name], rest)
        encoder.load_state_dict(saved)

    # -- state ---------------------------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors keyed as in the file: ``prompt_embeddings`` + ``base_model.``-prefixed copies."""
        self.check_names([adapter_name])
        config = self.peft_config[adapter_name]
        state: dict[str, torch.Tensor] = {PROMPT_KEY: self.encoders[adapter_name].saved_output()}  # type: ignore[operator]  # the encoders are PromptEncoderBase modules
        state.update(add_prefix(adapter_state_dict(self.model, adapter_name, config), PROMPT_MODEL_PREFIX))
        return state
