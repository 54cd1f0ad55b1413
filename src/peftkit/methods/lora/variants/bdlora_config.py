"""The configuration of BD-LoRA, block-diagonal LoRA (``LoraConfig(use_bdlora=BdLoraConfig(...))``; PEFT's variant).

BD-LoRA makes one factor of each adapted layer block-diagonal with ``nblocks`` blocks, so that under tensor
parallelism with ``nblocks`` shards every shard computes its part of the LoRA update without communication
between devices (faster multi-LoRA serving). The rule for choosing:
layers whose weight is sharded by rows of the input (attention output, MLP down projection) take a
block-diagonal ``A``; layers sharded by output columns (Q, K, V, MLP up and gate) take a block-diagonal ``B``.

This module holds only data (no torch), so that :class:`~peftkit.methods.lora.config.LoraConfig` can turn the
``use_bdlora`` object of an ``adapter_config.json`` back into a :class:`BdLoraConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from peftkit.config_checks import check_field_types, check_size
from peftkit.errors import ConfigError


@dataclass
class BdLoraConfig:
    """Which adapted layers get a block-diagonal ``A`` or ``B``, and how many blocks.

    Attributes:
        target_modules_bd_a: Substrings of module names whose ``lora_A`` is block-diagonal (a layer matches when
            one of them occurs anywhere in its full name, e.g. ``["o_proj", "down_proj"]``).
        target_modules_bd_b: The same for a block-diagonal ``lora_B`` (e.g. ``["q_proj", "k_proj", "v_proj"]``).
        nblocks: Number of diagonal blocks (the tensor-parallel degree at serving time); ``1`` is plain LoRA.
        match_strict: ``True``: every adapted layer must match one of the two lists (a layer matching neither
            is an error); ``False``: such layers run plain LoRA.

    Raises:
        ConfigError: a pattern is in both lists, ``nblocks`` is not a positive integer, or a field has the wrong
            type.
    """

    target_modules_bd_a: list[str] | None = None
    target_modules_bd_b: list[str] | None = None
    nblocks: int = 1
    match_strict: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)
        check_size(type(self).__name__, "nblocks", self.nblocks)
        overlap = sorted(set(self.target_modules_bd_a or []) & set(self.target_modules_bd_b or []))
        if overlap:
            raise ConfigError(
                f"BdLoraConfig: the patterns {overlap} are in both target_modules_bd_a and target_modules_bd_b "
                "(overlapping modules); a layer's block-diagonal factor is either A or B, so list each in one only."
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as PEFT writes them in ``adapter_config.json``."""
        return dataclasses.asdict(self)
