"""LoRA configuration (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

The field names and defaults are PEFT's, so that ``adapter_config.json`` files move between peftkit and
PEFT unchanged. Fields of PEFT features peftkit does not implement keep PEFT's defaults and are checked.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, check_size, name_set
from peftkit.errors import ConfigError, UnsupportedError
from peftkit.methods.lora.variants.bdlora_config import BdLoraConfig
from peftkit.methods.lora.variants.kasa_config import KasaConfig
from peftkit.methods.lora.variants.monteclora_config import MontecloraConfig
from peftkit.methods.lora.variants.subconfig import as_subconfig
from peftkit.methods.trainable_tokens.config import check_token_indices
from peftkit.types import PeftType

_INIT_NAMES = ("gaussian", "pissa", "olora", "orthogonal", "mica")
_PISSA_NITER = re.compile(r"pissa_niter_(\d+)")
#: How ``rank_pattern`` / ``alpha_pattern`` keys are matched against module names (see ``targeting``).
_PATTERN_TEMPLATE = r"(.*\.)?({})$"


@dataclass
class LoraConfig(PeftConfig):
    """Configuration of a LoRA adapter: ``y = W x + (alpha / r) * B A x``.

    Attributes:
        r: Rank of the update (``A`` is ``(r, in)``, ``B`` is ``(out, r)``); a positive integer.
        target_modules: Module names to adapt: a list of names (a name matches a module whose full name
            equals it or ends with ``.name``), a regex string matched against the full name, or
            ``"all-linear"`` (every Linear / Conv1D except the output head). ``None`` uses the per-architecture
            default.
        exclude_modules: Names (or a regex) never adapted, with the same matching rules.
        lora_alpha: Scaling numerator: ``scaling = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
        lora_dropout: Dropout probability on the adapter input, in ``[0, 1)``.
        fan_in_fan_out: ``True`` when the base weight is stored ``(in, out)`` (GPT-2 ``Conv1D``).
        bias: Which biases train and are saved: ``"none"``, ``"all"`` or ``"lora_only"``.
        use_rslora: Rank-stabilised scaling ``lora_alpha / sqrt(r)`` (Kalajdzievski, 2023).
        modules_to_save: Modules trained in full and saved with the adapter (e.g. a classifier head).
        init_lora_weights: ``True`` (A Kaiming-uniform, B zero), ``False`` (both random), ``"gaussian"``,
            ``"pissa"`` / ``"pissa_niter_N"`` (Meng et al., 2024), ``"olora"`` (Büyükakyüz, 2024) or
            ``"orthogonal"`` (even ``r``; see :mod:`peftkit.methods.lora.orthogonal`) or ``"mica"`` (``B`` from the
            base weight's minor singular vectors, frozen; see :mod:`peftkit.methods.lora.mica`).
        layers_to_transform: Only adapt layers with these indices.
        layers_pattern: Name of the layer list (``"layers"``, ``"h"``, ...) used with ``layers_to_transform``.
        rank_pattern: ``{regex: r}`` overriding ``r`` for matching module names.
        alpha_pattern: ``{regex: alpha}`` overriding ``lora_alpha`` for matching module names.
        ensure_weight_tying: With tied word embeddings, targeting either ``embed_tokens`` or ``lm_head`` adapts
            both, the head's factors tied to the embedding's, so both sides keep one adapted table (PEFT's option).
        use_dora: Weight-decomposed LoRA (Liu et al., 2024): a trainable magnitude per output row.
        lora_bias: Give ``lora_B`` a trainable bias.
        trainable_token_indices: Token ids whose embedding rows train with the adapter: a list (the input
            embedding) or ``{module name: ids}`` (see :mod:`peftkit.methods.trainable_tokens.lora_tokens`).
        use_bdlora: BD-LoRA, block-diagonal ``A`` or ``B`` per layer (a :class:`BdLoraConfig` or a dict of its
            fields; see :mod:`peftkit.methods.lora.variants.bdlora`).
        kasa_config: KaSA (a :class:`KasaConfig` or a dict of its fields): truncate each adapted base weight's ``r``
            smallest singular components and learn a diagonal between ``B`` and ``A``
            (:mod:`peftkit.methods.lora.variants.kasa`).
        monteclora_config: MonteCLoRA (a :class:`MontecloraConfig` or a dict of its fields): Monte Carlo perturbed
            ``A`` in training, plain LoRA in eval (:mod:`peftkit.methods.lora.variants.monteclora`).
    """

    r: int = 8
    target_modules: set[str] | list[str] | str | None = None
    exclude_modules: set[str] | list[str] | str | None = None
    lora_alpha: int | float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    use_dora: bool = False
    lora_bias: bool = False
    # PEFT fields that peftkit writes with PEFT's defaults and refuses to honour otherwise.
    alora_invocation_tokens: list[int] | None = None
    arrow_config: dict | None = None
    corda_config: dict | None = None
    ensure_weight_tying: bool = False
    eva_config: dict | None = None
    kasa_config: KasaConfig | None = None
    layer_replication: list | None = None
    loftq_config: dict = field(default_factory=dict)
    lora_ga_config: dict | None = None
    megatron_config: dict | None = None
    megatron_core: str | None = "megatron.core"
    monteclora_config: MontecloraConfig | None = None
    qalora_group_size: int = 16
    target_parameters: list[str] | None = None
    trainable_token_indices: list | dict | None = None
    use_bdlora: BdLoraConfig | None = None
    use_qalora: bool = False
    velora_config: dict | None = None

    #: ``lora_alpha == 0`` makes the scaling 0 (AdaLoRA then scales by the rank instead).
    zero_alpha_disables: ClassVar[bool] = True

    unsupported_fields: ClassVar[tuple[str, ...]] = (
        "alora_invocation_tokens",
        "arrow_config",
        "corda_config",
        "eva_config",
        "layer_replication",
        "loftq_config",
        "lora_ga_config",
        "megatron_config",
        "use_qalora",
        "velora_config",
    )

    def __post_init__(self) -> None:
        self.peft_type = PeftType("LORA")
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        self.use_bdlora = as_subconfig(BdLoraConfig, "use_bdlora", self.use_bdlora)
        self.kasa_config = as_subconfig(KasaConfig, "kasa_config", self.kasa_config)
        self.monteclora_config = as_subconfig(MontecloraConfig, "monteclora_config", self.monteclora_config)
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"LoraConfig.r must be a positive integer, got {self.r!r}.")
        check_size(type(self).__name__, "r", self.r)
        for name in ("target_modules", "exclude_modules"):
            check_regex(type(self).__name__, name, getattr(self, name))
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}.")
        if self.bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}.")
        self._validate_alpha()
        self._validate_rank_pattern()
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ConfigError("layers_to_transform cannot be used when target_modules is a regex string.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ConfigError("layers_pattern is only used together with layers_to_transform; set both.")
        self._validate_init()
        self._validate_token_indices()

    @property
    def trains_token_rows(self) -> bool:
        """PEFT's rule: with ``trainable_token_indices`` whole embedding tables are not saved for targeting them."""
        return self.trainable_token_indices is not None

    def _validate_token_indices(self) -> None:
        indices = self.trainable_token_indices
        owner = f"{type(self).__name__}.trainable_token_indices"
        if isinstance(indices, dict):
            for name, ids in indices.items():
                check_token_indices(f"{owner}[{name!r}]", ids)
        elif indices is not None:
            check_token_indices(owner, indices)

    def _validate_alpha(self) -> None:
        """``alpha_pattern`` is ``{regex: number}``; an alpha of 0 (scaling 0) is legal but warned about."""
        if not isinstance(self.alpha_pattern, dict):
            raise ConfigError(f"LoraConfig.alpha_pattern must be a dict {{regex: alpha}}, got {self.alpha_pattern!r}.")
        zero = ["lora_alpha"] if self.lora_alpha == 0 else []
        zero = zero if self.zero_alpha_disables else []
        for key, alpha in self.alpha_pattern.items():
            check_regex(type(self).__name__, f"alpha_pattern key {key!r}", key, _PATTERN_TEMPLATE)
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
                raise ConfigError(f"LoraConfig.alpha_pattern[{key!r}] must be a finite number, got {alpha!r}.")
            if alpha == 0 and self.zero_alpha_disables:
                zero.append(f"alpha_pattern[{key!r}]")
        if not math.isfinite(self.lora_alpha):
            raise ConfigError(f"LoraConfig.lora_alpha must be a finite number, got {self.lora_alpha!r}.")
        if zero:
            warnings.warn(
                f"{type(self).__name__}: {', '.join(zero)} = 0 makes the scaling alpha / r zero, so the adapter can "
                "never change the output and its lora_A never receives a gradient; use a positive lora_alpha.",
                stacklevel=5,
            )

    def _validate_rank_pattern(self) -> None:
        if not isinstance(self.rank_pattern, dict):
            raise ConfigError(f"LoraConfig.rank_pattern must be a dict of {{regex: r}}, got {self.rank_pattern!r}.")
        for key, rank in self.rank_pattern.items():
            check_regex(type(self).__name__, f"rank_pattern key {key!r}", key, _PATTERN_TEMPLATE)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
                raise ConfigError(f"LoraConfig.rank_pattern[{key!r}] must be a positive integer, got {rank!r}.")
            check_size(type(self).__name__, f"rank_pattern[{key!r}]", rank)

    def _register_custom_module(self, mapping: dict[type, type]) -> None:
        """PEFT's experimental dynamic dispatch: adapt modules of the types in ``mapping`` (searched along each
        module's MRO, before the built-in table) with the given layer class, which takes peftkit's LoRA layer
        constructor ``(base_layer, fan_in_fan_out=False)`` -- e.g. a subclass of ``peftkit.tuners.lora.Linear``.
        Not saved with the config: register it again on the config used to load."""
        custom: dict[type, type] = dict(getattr(self, "_custom_modules", None) or {})
        custom.update(mapping)
        self._custom_modules = custom

    def _validate_init(self) -> None:
        init = self.init_lora_weights
        if init == "mica" and self.use_dora:
            raise ConfigError("init_lora_weights='mica' and use_dora=True are two LoRA variants that do not combine.")
        if isinstance(init, bool) or init in _INIT_NAMES or (isinstance(init, str) and _PISSA_NITER.fullmatch(init)):
            return
        known = ("eva", "corda", "loftq", "lora_ga")
        if init in known:
            raise UnsupportedError(f"init_lora_weights={init!r} is not implemented in peftkit; use True or 'pissa'.")
        raise ConfigError(
            f"LoraConfig.init_lora_weights={init!r} is not valid; use True, False, 'gaussian', 'pissa', "
            "'pissa_niter_N', 'olora', 'orthogonal' or 'mica'."
        )
