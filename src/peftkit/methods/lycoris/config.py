"""The configuration fields LoHa and LoKr share (PEFT's ``LycorisConfig`` plus the fields both subclasses
declare), with their checks.

Both methods replace ``W`` by ``W + delta W`` where ``delta W`` is built from small factors and scaled by
``alpha / r``; ``rank_pattern`` / ``alpha_pattern`` override ``r`` / ``alpha`` per module. The field names
and defaults are PEFT's, so ``adapter_config.json`` files move between peftkit and PEFT unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, check_size, name_set
from peftkit.errors import ConfigError

#: How ``rank_pattern`` / ``alpha_pattern`` keys are matched against module names (see ``targeting``).
_PATTERN_TEMPLATE = r"(.*\.)?({})$"


@dataclass
class LycorisConfig(PeftConfig):
    """Fields shared by :class:`~peftkit.methods.loha.config.LoHaConfig` and
    :class:`~peftkit.methods.lokr.config.LoKrConfig`.

    Attributes:
        r: Rank of the factors; a positive integer.
        alpha: Scaling numerator: ``delta W`` is multiplied by ``alpha / r``.
        rank_dropout: While training, each output row of ``delta W`` is dropped with this probability, in
            ``[0, 1]``.
        module_dropout: While training, the whole adapter of a layer is skipped with this probability, in
            ``[0, 1]``.
        use_effective_conv2d: On convolutions with a kernel larger than 1, factor the kernel with a CP
            (Tucker) core ``t`` of shape ``(r, r, *kernel)`` (FedPara's "Proposition 3"), instead of
            flattening the kernel into the input dimension.
        target_modules: Module names to adapt (list, regex string or ``"all-linear"``); ``None`` uses the
            per-architecture default.
        exclude_modules: Names (or a regex) never adapted.
        init_weights: ``True`` starts with ``delta W = 0``; ``False`` starts every factor random.
        layers_to_transform: Only adapt layers with these indices.
        layers_pattern: Name of the layer list used with ``layers_to_transform``.
        rank_pattern: ``{regex: r}`` overriding ``r`` for matching module names.
        alpha_pattern: ``{regex: alpha}`` overriding ``alpha`` for matching module names.
        modules_to_save: Modules trained in full and saved with the adapter.
    """

    r: int = 8
    alpha: int | float = 8
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    use_effective_conv2d: bool = False
    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    init_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        owner = type(self).__name__
        check_size(owner, "r", self.r)
        if not math.isfinite(self.alpha):
            raise ConfigError(f"{owner}.alpha must be a finite number, got {self.alpha!r}.")
        for name in ("rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{owner}.{name} is a probability and must be in [0, 1], got {value!r}.")
        for name in ("target_modules", "exclude_modules"):
            check_regex(owner, name, getattr(self, name))
        self._validate_patterns()
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ConfigError(f"{owner}: layers_to_transform cannot be used when target_modules is a regex string.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ConfigError(f"{owner}: layers_pattern is only used together with layers_to_transform; set both.")

    def _validate_patterns(self) -> None:
        owner = type(self).__name__
        for name, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict):
                raise ConfigError(f"{owner}.{name} must be a dict {{regex: value}}, got {pattern!r}.")
            for key, value in pattern.items():
                check_regex(owner, f"{name} key {key!r}", key, _PATTERN_TEMPLATE)
                if positive_int:
                    check_size(owner, f"{name}[{key!r}]", value)
                elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ConfigError(f"{owner}.{name}[{key!r}] must be a finite number, got {value!r}.")
