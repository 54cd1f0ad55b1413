"""IA3 configuration (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning", arXiv:2205.05638).

IA3 learns one scaling vector per adapted layer: attention-type layers rescale their output, feed-forward
layers rescale their input. The field names and defaults are PEFT's, so ``adapter_config.json`` files move
between peftkit and PEFT unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftkit.config import PeftConfig
from peftkit.errors import ConfigError
from peftkit.types import PeftType


@dataclass
class IA3Config(PeftConfig):
    """Configuration of an IA3 adapter.

    For an attention-type target ``y = base(x) * l`` with ``l`` of shape ``(out, 1)``; for a feed-forward
    target ``y = base(x * l)`` with ``l`` of shape ``(1, in)``.

    Attributes:
        target_modules: Module names to adapt: a list of names (matching a module whose full name equals a
            name or ends with ``.name``), a regex string matched against the full name, or ``"all-linear"``.
            ``None`` uses the per-architecture default.
        exclude_modules: Names (or a regex) never adapted, with the same matching rules.
        feedforward_modules: The targets treated as feed-forward layers (their input is scaled): a list of
            name suffixes (a module is feed-forward when its full name ends with one) or a regex string.
            A list must be a subset of a list-valued ``target_modules``. ``None`` uses the architecture
            default (an unknown architecture then needs an explicit value, possibly ``[]``).
        fan_in_fan_out: ``True`` when the base weight is stored ``(in, out)``; set automatically for GPT-2
            ``Conv1D`` and cleared for ``nn.Linear``.
        modules_to_save: Modules trained in full and saved with the adapter (e.g. a classifier head).
        init_ia3_weights: ``True`` starts every vector at ones (the adapter is the identity); ``False``
            starts them random (useful for tests).
    """

    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    feedforward_modules: set[str] | list[str] | str | None = None
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        self.peft_type = PeftType("IA3")
        for name in ("target_modules", "exclude_modules", "feedforward_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.init_ia3_weights, bool):
            raise ConfigError(f"IA3Config.init_ia3_weights must be True or False, got {self.init_ia3_weights!r}.")
        if not isinstance(self.fan_in_fan_out, bool):
            raise ConfigError(f"IA3Config.fan_in_fan_out must be True or False, got {self.fan_in_fan_out!r}.")
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, set) and isinstance(feedforward, set) and not feedforward <= targets:
            stray = ", ".join(sorted(feedforward - targets))
            raise ConfigError(
                f"IA3Config.feedforward_modules must be a subset of target_modules; {stray} is not a target. "
                "Add it to target_modules or remove it from feedforward_modules."
            )
