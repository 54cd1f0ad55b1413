"""LoRA's method spec: which layers it wraps, and the per-layer facts derived from a config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from peftkit.defaults import default_lora_targets
from peftkit.layers.base import AdapterLayer
from peftkit.layers.walk import walk_model
from peftkit.methods.lora.arrow_config import ArrowConfig
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.lora.conv import Conv
from peftkit.methods.lora.describe import describe_lora_module
from peftkit.methods.lora.embedding import Embedding
from peftkit.methods.lora.eva import get_eva_state_dict, initialize_lora_eva_weights
from peftkit.methods.lora.init import is_weight_decomposing
from peftkit.methods.lora.init_configs import CordaConfig, EvaConfig, LoftQConfig
from peftkit.methods.lora.layer import Linear, LoraLayer, LoraLayerSpec
from peftkit.methods.lora.loftq import replace_lora_weights_loftq
from peftkit.methods.lora.loraga import preprocess_loraga
from peftkit.methods.lora.loraga_config import LoraGAConfig
from peftkit.methods.lora.loraga_init import check_lora_ga
from peftkit.methods.lora.model import LoraModel
from peftkit.methods.lora.multihead import MultiheadAttention, warn_unused_out_proj
from peftkit.methods.lora.param import ParamWrapper
from peftkit.methods.lora.tying import prepare_tied_targets, tie_adapters
from peftkit.methods.lora.variants import build_variant, sets_variant
from peftkit.methods.lora.variants.bdlora_config import BdLoraConfig
from peftkit.methods.lora.variants.kasa_config import KasaConfig
from peftkit.methods.lora.variants.monteclora_config import MontecloraConfig
from peftkit.methods.lora.variants.velora_config import VeloraConfig
from peftkit.methods.spec import BiasRule, CliOption, MethodSpec
from peftkit.methods.trainable_tokens.lora_tokens import inject_token_adapters
from peftkit.targeting import pattern_value
from peftkit.types import PeftType

#: ``bias`` values of LoRA-family configs (PEFT's): ``"lora_only"`` trains the biases of the adapted layers.
LORA_BIAS_MODES: dict[str, BiasRule] = {"none": "none", "all": "all", "lora_only": "adapter_layers"}

#: ``peftkit train`` options shared by LoRA and AdaLoRA.
LORA_CLI_OPTIONS = (
    CliOption("alpha", "lora_alpha", float, "Scaling numerator, scaling = alpha / r", 16),
    CliOption("dropout", "lora_dropout", float, "Dropout on the adapter input", 0.05, ("target_parameters",)),
    CliOption(
        "target_modules",
        "target_modules",
        str,
        "Modules to adapt: comma-separated names, a regex, or all-linear (none when --target-parameters is given)",
        "all-linear",
        ("target_parameters",),
    ),
)
#: LoRA on parameters (one LoRA per expert of fused MoE weights); no dropout there, so its default is dropped.
TARGET_PARAMETERS_OPTION = CliOption(
    "target_parameters",
    "target_parameters",
    str,
    "Parameters to adapt, comma-separated <module>.<parameter> (e.g. experts.gate_up_proj,experts.down_proj)",
)


def init_options(config: LoraConfig) -> Any:
    """The sub-config of the named initialisation ``config.init_lora_weights``: LoRA-GA's ``lora_ga_config``,
    LoftQ's ``loftq_config`` (a dict), else ``None``."""
    if config.init_lora_weights == "lora_ga":
        return config.lora_ga_config
    if config.init_lora_weights == "loftq" and isinstance(config.loftq_config, dict):
        return dict(config.loftq_config)
    return None


def lora_layer_facts(config: LoraConfig, name: str, module: nn.Module) -> LoraLayerSpec:
    """Rank and alpha after ``rank_pattern`` / ``alpha_pattern``; ``fan_in_fan_out`` forced on for Conv1D."""
    return LoraLayerSpec(
        r=int(pattern_value(name, config.rank_pattern, config.r)),
        alpha=float(pattern_value(name, config.alpha_pattern, config.lora_alpha)),
        dropout=float(config.lora_dropout),
        init=config.init_lora_weights,
        use_rslora=config.use_rslora,
        use_dora=config.use_dora,
        fan_in_fan_out=isinstance(module, Conv1D) or (config.fan_in_fan_out and not isinstance(module, nn.Linear)),
        lora_bias=config.lora_bias,
        variant=build_variant(config, name, module),
        init_options=init_options(config),
    )


def settle_lora_config(config: LoraConfig, model: nn.Module, target_names: Sequence[str]) -> None:
    """Make ``config.fan_in_fan_out`` describe the adapted layers, as PEFT records it in its saved config.

    GPT-2's ``Conv1D`` stores its weight ``(in, out)``, so it sets the flag; ``nn.Linear`` (``(out, in)``)
    clears it. When the targets mix both, the last one in module order wins (PEFT's behaviour).
    """
    modules = dict(walk_model(model))  # one walk, not a path lookup per target
    for name in target_names:
        module = modules[name] if name in modules else model.get_submodule(name)
        base = module.get_base_layer() if isinstance(module, AdapterLayer) else module
        if isinstance(base, Conv1D):
            config.fan_in_fan_out = True
        elif isinstance(base, nn.Linear):
            config.fan_in_fan_out = False


def finish_lora_injection(config: LoraConfig, model: nn.Module, adapter_name: str) -> None:
    """Run the variants' ``finish`` (:mod:`~peftkit.methods.lora.variant`), tie adapters on tied embeddings, add
    the ``trainable_token_indices`` rows, warn about adapters an attention module never runs."""
    # variants' steps that wait for every layer (variant.py); the walk skips adapter insides, unlike modules(), and
    # is skipped itself for a plain LoRA config, whose layers have no variant
    for _, module in walk_model(model) if sets_variant(config) else ():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_variant:
            module.lora_variant[adapter_name].finish(module, adapter_name)
    tie_adapters(config, model, adapter_name)
    inject_token_adapters(config, model, adapter_name)
    warn_unused_out_proj(model)


def prepare_lora_config(config: LoraConfig, model: nn.Module) -> object:
    """Before injecting: refuse a LoRA-GA adapter that cannot initialise (:func:`check_lora_ga`) while nothing is
    changed yet, then widen tied targets (:func:`prepare_tied_targets`)."""
    check_lora_ga(config, model)
    return prepare_tied_targets(config, model)


def redo_decomposing_init(model: nn.Module, config: LoraConfig, adapter_name: str) -> None:
    """After loading an adapter saved with ``init_lora_weights`` PiSSA / OLoRA (not converted to a plain LoRA):
    rewrite each adapted base weight to its residual ``W - s * B0 @ A0`` (``A0``, ``B0`` from the decomposition of
    the base as loaded), keeping the loaded factors. This is what PEFT does at load (it re-runs the
    initialisation before copying the saved tensors), so such an adapter belongs on the original base model."""
    init = getattr(config, "init_lora_weights", True)
    if not is_weight_decomposing(init):
        return
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            module.redo_base_rewrite(adapter_name, str(init), init_options(config))


LORA = MethodSpec(
    peft_type=PeftType("LORA"),
    config_class=LoraConfig,
    model_class_name="LoraModel",
    prefix="lora_",
    layer_table={
        nn.Linear: Linear,
        Conv1D: Linear,
        nn.Embedding: Embedding,
        nn.Conv1d: Conv,
        nn.Conv2d: Conv,
        nn.Conv3d: Conv,
        nn.MultiheadAttention: MultiheadAttention,
    },
    layer_facts=lora_layer_facts,
    default_targets=default_lora_targets,
    linear_types=(nn.Linear, Conv1D),
    file_key_renames={".lora_magnitude_vector.weight": ".lora_magnitude_vector"},
    settle_config=settle_lora_config,
    pattern_fields=("rank_pattern", "alpha_pattern"),
    prepare_config=prepare_lora_config,
    after_inject=finish_lora_injection,
    bias_modes=LORA_BIAS_MODES,
    after_load=redo_decomposing_init,
    tuner_class=LoraModel,
    parameter_layer=ParamWrapper,
    public_names={
        "LoraConfig": LoraConfig,
        "LoraModel": LoraModel,
        "BdLoraConfig": BdLoraConfig,
        "LoraGAConfig": LoraGAConfig,
        "preprocess_loraga": preprocess_loraga,
        "ArrowConfig": ArrowConfig,
        "CordaConfig": CordaConfig,
        "EvaConfig": EvaConfig,
        "get_eva_state_dict": get_eva_state_dict,
        "initialize_lora_eva_weights": initialize_lora_eva_weights,
        "LoftQConfig": LoftQConfig,
        "replace_lora_weights_loftq": replace_lora_weights_loftq,
        "KasaConfig": KasaConfig,
        "MontecloraConfig": MontecloraConfig,
        "VeloraConfig": VeloraConfig,
    },
    cli_name="lora",
    cli_options=(
        CliOption("r", "r", int, "Rank", 8),
        *LORA_CLI_OPTIONS,
        TARGET_PARAMETERS_OPTION,
        CliOption("use_dora", "use_dora", bool, "Weight-decomposed LoRA"),
    ),
    cli_learning_rate=2e-4,
    describe_module=describe_lora_module,
)
