"""BOFT's method spec: the layers it wraps, the per-layer block split and butterfly check, and ``BOFTModel``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from peftkit.methods.boft.butterfly import check_butterfly
from peftkit.methods.boft.config import BOFTConfig
from peftkit.methods.boft.layer import BOFTLayerSpec, Conv2d, Linear
from peftkit.methods.oft.method import ORTHOGONAL_SPEC_FIELDS, TARGETS_OPTION
from peftkit.methods.oft.orthogonal import rotated_width, split_width
from peftkit.methods.spec import CliOption, MethodSpec
from peftkit.tuner import TunerModel
from peftkit.types import PeftType


class BOFTModel(TunerModel):
    """The tuner model of BOFT adapters (``PeftModel.base_model``); all behaviour is :class:`TunerModel`'s."""

    prefix: str = "boft_"


def boft_layer_facts(config: BOFTConfig, name: str, module: nn.Module) -> BOFTLayerSpec:
    """The block split of module ``name`` (``boft_block_size * boft_block_num`` = its rotated width).

    Raises:
        ConfigError: the configured block size / count does not divide the width, or the butterfly factors
            do not fit it.
        TargetingError: a Conv2d this method cannot describe (see :func:`rotated_width`).
    """
    width = rotated_width(module, "BOFT", name)
    where = f"module {name!r} ({type(module).__name__})"
    fields = ("boft_block_size", "boft_block_num")
    size, count = split_width(width, config.boft_block_size, config.boft_block_num, fields, where, "BOFTConfig")
    check_butterfly(width, size, count, config.boft_n_butterfly_factor, where)
    return BOFTLayerSpec(
        width=width,
        block_size=size,
        block_num=count,
        factors=config.boft_n_butterfly_factor,
        dropout=float(config.boft_dropout),
        init=config.init_weights,
    )


def describe_boft_module(
    module: str, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[int | None, float | None]:
    """``(blocks per factor, None)`` for ``peftkit inspect`` (the weight change needs the base weight)."""
    blocks = tensors.get("boft_R")
    return (None, None) if blocks is None else (int(blocks.shape[1]), None)


BOFT = MethodSpec(
    peft_type=PeftType("BOFT"),
    config_class=BOFTConfig,
    model_class_name="BOFTModel",
    prefix="boft_",
    layer_table={nn.Linear: Linear, nn.Conv2d: Conv2d},
    layer_facts=boft_layer_facts,
    tuner_class=BOFTModel,
    bias_modes={"none": "none", "all": "all", "boft_only": "adapter_layers"},
    public_names={"BOFTConfig": BOFTConfig, "BOFTModel": BOFTModel},
    cli_name="boft",
    cli_options=(
        CliOption("boft_block_size", "boft_block_size", int, "BOFT block size (divides each target's width)", 4),
        CliOption("boft_n_butterfly_factor", "boft_n_butterfly_factor", int, "Number of butterfly factors", 1),
        TARGETS_OPTION,
    ),
    describe_module=describe_boft_module,
    **ORTHOGONAL_SPEC_FIELDS,
)
