"""LoRA configuration (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

The field names and defaults are PEFT's, so that ``adapter_config.json`` files move between peftkit and
PEFT unchanged. Fields of PEFT features peftkit does not implement keep PEFT's defaults and are checked.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from peftkit.config import PeftConfig
from peftkit.config_checks import check_regex, check_size, name_set
from peftkit.errors import ConfigError
from peftkit.methods.lora.arrow_config import ArrowConfig
from peftkit.methods.lora.init_configs import CordaConfig, EvaConfig, LoftQConfig
from peftkit.methods.lora.loraga_config import LoraGAConfig
from peftkit.methods.lora.variants.bdlora_config import BdLoraConfig
from peftkit.methods.lora.variants.kasa_config import KasaConfig
from peftkit.methods.lora.variants.monteclora_config import MontecloraConfig
from peftkit.methods.lora.variants.subconfig import as_subconfig
from peftkit.methods.lora.variants.velora_config import VeloraConfig
from peftkit.methods.trainable_tokens.config import check_token_indices
from peftkit.types import PeftType

_INIT_NAMES = ("gaussian", "pissa", "olora", "orthogonal", "mica", "lora_ga", "corda", "eva", "loftq")
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
            base weight's minor singular vectors, frozen; see :mod:`peftkit.methods.lora.mica`), ``"lora_ga"``
            (from gradients that :func:`~peftkit.methods.lora.loraga.preprocess_loraga` estimated; see
            :mod:`peftkit.methods.lora.loraga_init`), or the data-driven ``"corda"`` / ``"eva"`` / ``"loftq"``
            (see ``corda.py``, ``eva.py``, ``loftq.py``).
        corda_config, eva_config, loftq_config: Settings of those three (``init_configs.py``); a missing
            ``corda_config`` / ``eva_config`` takes the defaults, with a warning, as in PEFT.
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
        lora_ga_config: LoRA-GA's options (a :class:`~peftkit.methods.lora.loraga_config.LoraGAConfig` or its dict),
            read when ``init_lora_weights="lora_ga"``.
        arrow_config: Makes the adapter an Arrow router over the layer's other LoRA adapters (an
            :class:`~peftkit.methods.lora.arrow_config.ArrowConfig` or its dict; see
            :func:`~peftkit.methods.lora.arrow.create_arrow_model`).
        use_bdlora: BD-LoRA, block-diagonal ``A`` or ``B`` per layer (a :class:`BdLoraConfig` or a dict of its
            fields; see :mod:`peftkit.methods.lora.variants.bdlora`).
        kasa_config: KaSA (a :class:`KasaConfig` or a dict of its fields): truncate each adapted base weight's ``r``
            smallest singular components and learn a diagonal between ``B`` and ``A``
            (:mod:`peftkit.methods.lora.variants.kasa`).
        monteclora_config: MonteCLoRA (a :class:`MontecloraConfig` or a dict of its fields): Monte Carlo perturbed
            ``A`` in training, plain LoRA in eval (:mod:`peftkit.methods.lora.variants.monteclora`).
        velora_config: VeLoRA's settings (a :class:`VeloraConfig`; a dict is converted): training keeps each
            adapted layer's input compressed for ``lora_A``'s gradient (see
            :mod:`peftkit.methods.lora.variants.velora`).
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
    arrow_config: ArrowConfig | dict | None = None
    corda_config: CordaConfig | dict | None = None
    ensure_weight_tying: bool = False
    eva_config: EvaConfig | dict | None = None
    kasa_config: KasaConfig | None = None
    layer_replication: list | None = None
    loftq_config: LoftQConfig | dict = field(default_factory=dict)
    lora_ga_config: LoraGAConfig | dict | None = None
    megatron_config: dict | None = None
    megatron_core: str | None = "megatron.core"
    monteclora_config: MontecloraConfig | None = None
    qalora_group_size: int = 16
    target_parameters: list[str] | None = None
    trainable_token_indices: list | dict | None = None
    use_bdlora: BdLoraConfig | None = None
    use_qalora: bool = False
    velora_config: VeloraConfig | None = None

    #: ``lora_alpha == 0`` makes the scaling 0 (AdaLoRA then scales by the rank instead).
    zero_alpha_disables: ClassVar[bool] = True

    unsupported_fields: ClassVar[tuple[str, ...]] = (
        "alora_invocation_tokens",
        "layer_replication",
        "megatron_config",
        "use_qalora",
    )

    def __post_init__(self) -> None:
        self.peft_type = PeftType("LORA")
        self.target_modules = name_set(self.target_modules)
        self.exclude_modules = name_set(self.exclude_modules)
        self.use_bdlora = as_subconfig(BdLoraConfig, "use_bdlora", self.use_bdlora)
        self.lora_ga_config = as_subconfig(LoraGAConfig, "lora_ga_config", self.lora_ga_config)
        self.arrow_config = as_subconfig(ArrowConfig, "arrow_config", self.arrow_config)
        self.kasa_config = as_subconfig(KasaConfig, "kasa_config", self.kasa_config)
        self.monteclora_config = as_subconfig(MontecloraConfig, "monteclora_config", self.monteclora_config)
        self.velora_config = as_subconfig(VeloraConfig, "velora_config", self.velora_config)
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

    def _settle_init_configs(self) -> None:
        """Sub-configs as dataclasses (``loftq_config`` as a dict, PEFT's form); the one the init does not use is
        warned about, a missing one for the init chosen is defaulted (PEFT's rules and order)."""
        init = self.init_lora_weights
        self.corda_config = as_subconfig(CordaConfig, "corda_config", self.corda_config)
        self.eva_config = as_subconfig(EvaConfig, "eva_config", self.eva_config)
        if isinstance(self.loftq_config, LoftQConfig):
            self.loftq_config = dataclasses.asdict(self.loftq_config)
        if init == "loftq":
            if not self.loftq_config:
                raise ConfigError("init_lora_weights='loftq' needs loftq_config=LoftQConfig(...); pass one.")
        elif self.loftq_config:
            self.loftq_config = {}
            warnings.warn(
                f"LoraConfig: loftq_config is only read by init_lora_weights='loftq', not {init!r}; it was cleared.",
                stacklevel=6,
            )
        else:
            self._default_or_ignore_subconfig(init)

    def _default_or_ignore_subconfig(self, init: bool | str) -> None:
        """EVA's and CorDA's sub-config: defaulted (with a warning) when their init is chosen without one, warned
        about when set for another init; at most one warning, in PEFT's order (EVA first)."""
        for name, cls in (("eva", EvaConfig), ("corda", CordaConfig)):
            field_name = f"{name}_config"
            if init == name and getattr(self, field_name) is None:
                warnings.warn(
                    f"LoraConfig: init_lora_weights={name!r} without a {field_name}; {cls.__name__}() with its "
                    "defaults is used.",
                    stacklevel=7,
                )
                setattr(self, field_name, cls())
                return
            if init != name and getattr(self, field_name) is not None:
                warnings.warn(
                    f"LoraConfig: {field_name} is only read by init_lora_weights={name!r}, not {init!r}; it has no "
                    "effect.",
                    stacklevel=7,
                )
                return

    def _validate_init(self) -> None:
        self._settle_init_configs()
        init = self.init_lora_weights
        if self.lora_bias and not isinstance(init, bool):  # PEFT's rule: the named inits set no bias
            raise ConfigError(
                f"LoraConfig: lora_bias=True works with init_lora_weights=True or False only, not {init!r}."
            )
        if init == "mica" and self.use_dora:
            raise ConfigError("init_lora_weights='mica' and use_dora=True are two LoRA variants that do not combine.")
        if isinstance(init, bool) or init in _INIT_NAMES or (isinstance(init, str) and _PISSA_NITER.fullmatch(init)):
            return
        raise ConfigError(
            f"LoraConfig.init_lora_weights={init!r} is not valid; use True, False, 'gaussian', 'pissa', "
            "'pissa_niter_N', 'olora', 'orthogonal', 'mica', 'lora_ga', 'corda', 'eva' or 'loftq'."
        )
