"""Library exceptions. Each derives from the builtin that PEFT raises in the same place, so code written
against PEFT (``except ValueError``) keeps working, while callers can catch peftkit's own classes."""

from __future__ import annotations


class PeftkitError(Exception):
    """Base class of every error raised by peftkit on purpose."""


class ConfigError(PeftkitError, ValueError):
    """A config value is invalid, or a config file cannot be read."""


class ConfigKeysError(ConfigError, TypeError):
    """A config file lacks ``peft_type`` and holds keys no config has: not a PEFT config (a ``TypeError`` as in
    PEFT, which builds the config from the keys as keyword arguments)."""


class TargetingError(PeftkitError, ValueError):
    """The requested target modules do not exist in the model, or cannot be adapted."""


class AdapterNameError(PeftkitError, ValueError):
    """An adapter name is unknown, reserved, or already taken."""


class CheckpointError(PeftkitError, ValueError):
    """An adapter checkpoint is missing, corrupt, or does not fit the model."""


class UsageError(PeftkitError, ValueError):
    """A call does not fit its inputs or the model's state (a mixed batch while merged or training, prompt
    inputs without ``input_ids``, wrapping a model that already is a ``PeftModel``...)."""


class MergeError(UsageError, RuntimeError):
    """An adapter cannot be merged into its base layer (e.g. ``lora_bias=True`` on a base without a bias); a
    ``RuntimeError`` as in PEFT. Nothing is written when it is raised."""


class ArgumentTypeError(PeftkitError, TypeError):
    """An argument of the wrong type, or one the call does not take."""


class UnsupportedError(PeftkitError, NotImplementedError):
    """A valid PEFT feature that peftkit does not implement (yet)."""


class HotswapError(PeftkitError, ValueError, RuntimeError):
    """An adapter cannot be hot-swapped into the model (wrong order of calls, rank too large, other targets).

    Derives from both builtins, as PEFT raises ``ValueError`` and transformers ``RuntimeError`` in these places.
    """


class ConcurrencyError(PeftkitError, RuntimeError):
    """A change of a model's adapters was requested from inside a forward of that same model (see
    :mod:`peftkit.locking`)."""


class PeftWarning(UserWarning):
    """Category of the warnings PEFT marks as its own (``peft.PeftWarning``), e.g. an adapter that cannot be
    merged, or a save of ungathered shards."""


#: PEFT's names for the same classes (``peft.PeftError``, ``peft.utils.NoMatchingPeftModuleError``).
PeftError = PeftkitError
NoMatchingPeftModuleError = TargetingError
