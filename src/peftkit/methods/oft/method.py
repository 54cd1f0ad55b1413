"""OFT's method spec: the layers it wraps, the per-layer block split, and ``OFTModel``."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from peftkit.defaults import default_lora_targets
from peftkit.methods.lora.method import LORA_CLI_OPTIONS, settle_lora_config
from peftkit.methods.oft.config import OFTConfig
from peftkit.methods.oft.layer import Conv2d, Embedding, Linear, OFTLayerSpec
from peftkit.methods.oft.orthogonal import rotated_width, split_width
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.tuner import TunerModel
from peftkit.types import PeftType


class OFTModel(TunerModel):
    """The tuner model of OFT adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "oft_"


def oft_layer_facts(config: OFTConfig, name: str, module: nn.Module) -> OFTLayerSpec:
    """The block split of module ``name`` (``r * oft_block_size`` = its rotated width) and the config's settings.

    A configured ``r`` / ``oft_block_size`` that does not divide the module's width is replaced by the nearest
    divisor with a ``UserWarning``, as PEFT does (:func:`split_width`).

    Raises:
        TargetingError: a Conv2d this method cannot describe (see :func:`rotated_width`).
    """
    width = rotated_width(module, "OFT", name)
    where = f"module {name!r} ({type(module).__name__})"
    fields = ("oft_block_size", "r")
    size, count = split_width(width, config.oft_block_size, config.r, fields, where, "OFTConfig", adjust=True)
    if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
        warnings.warn(
            f"OFT on the {module.kernel_size[0]}x{module.kernel_size[0]} Conv2d {name!r}: peftkit convolves with the "
            "rotated filter, which is what PEFT's merged weights compute; PEFT's own unmerged forward folds "
            "overlapping patches for kernels larger than 1x1 and gives different outputs.",
            stacklevel=2,
        )
    return OFTLayerSpec(
        r=count,
        block_size=size,
        module_dropout=float(config.module_dropout),
        coft=config.coft,
        eps=float(config.eps),
        block_share=config.block_share,
        use_cayley_neumann=config.use_cayley_neumann,
        num_cayley_neumann_terms=config.num_cayley_neumann_terms,
        init=config.init_weights,
    )


def old_neumann_warning(config: OFTConfig, adapter_name: str) -> str | None:
    """The warning for loading a Cayley-Neumann adapter saved by PEFT before 0.18, whose series differed."""
    release = re.match(r"(\d+)\.(\d+)", config.peft_version or "")
    if not config.use_cayley_neumann or release is None or (int(release[1]), int(release[2])) >= (0, 18):
        return None
    return (
        f"OFT adapter {adapter_name!r} was saved by PEFT {config.peft_version}, whose Cayley-Neumann series differed "
        "from PEFT 0.18's (used here): its outputs will not be those it was trained with; retrain it."
    )


def describe_oft_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(stored blocks, None)`` for ``peftkit inspect``: the rows of ``oft_R`` (1 with ``block_share``); the
    weight change ``||W R^T - W||_F`` needs the base weight, which an adapter directory does not hold."""
    weight = tensors.get("oft_R.weight", tensors.get("oft_embedding_R.weight"))
    return (None, None) if weight is None else (int(weight.shape[0]), None)


#: What OFT and BOFT specs share: LoRA's architecture defaults, ``nn.Linear`` for ``"all-linear"``, LoRA's
#: ``fan_in_fan_out`` settling (cleared for ``nn.Linear``, as PEFT saves it) and the ``--target-modules`` option.
ORTHOGONAL_SPEC_FIELDS: dict[str, Any] = {
    "default_targets": default_lora_targets,
    "linear_types": (nn.Linear,),
    "settle_config": settle_lora_config,
    "cli_learning_rate": 1e-3,
}
TARGETS_OPTION = next(option for option in LORA_CLI_OPTIONS if option.name == "target_modules")

OFT = MethodSpec(
    peft_type=PeftType("OFT"),
    config_class=OFTConfig,
    model_class_name="OFTModel",
    prefix="oft_",
    layer_table={nn.Linear: Linear, nn.Conv2d: Conv2d, nn.Embedding: Embedding},
    layer_facts=oft_layer_facts,
    tuner_class=OFTModel,
    bias_modes={"none": "none", "all": "all", "oft_only": "adapter_layers"},
    init_warning=old_neumann_warning,
    public_names={"OFTConfig": OFTConfig, "OFTModel": OFTModel},
    cli_name="oft",
    cli_options=(
        CliOption("oft_block_size", "oft_block_size", int, "OFT block size (divides each target's width)", 4),
        TARGETS_OPTION,
    ),
    describe_module=describe_oft_module,
    **ORTHOGONAL_SPEC_FIELDS,
)
