"""Sub-configurations of the data-driven LoRA initialisations (``LoraConfig.corda_config``, ``eva_config``,
``loftq_config``), with PEFT's field names and defaults so that ``adapter_config.json`` files move unchanged.

A sub-config read back from JSON arrives as a plain dict; :func:`~peftkit.methods.lora.variants.subconfig.as_subconfig`
turns it into the dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from peftkit.errors import ConfigError

_S = TypeVar("_S")


@dataclass
class CordaConfig:
    """CorDA (Yang et al., 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models").

    Attributes:
        cache_file: File of the cropped decomposition (``{name}.eigens.S_WC`` / ``U_WC`` / ``V_WC``); reused when
            it exists, written by :func:`~peftkit.methods.lora.corda.preprocess_corda` otherwise.
        covariance_file: File of the per-layer input covariance ``C (in, in)``; reused when it exists.
        corda_method: ``"ipm"`` (instruction-previewed: the ``r`` largest components of ``W C`` train) or
            ``"kpm"`` (knowledge-preserved: the ``r`` smallest train, the largest stay in the base).
        verbose: Show progress while decomposing.
        use_float16_for_covariance: Accumulate the covariance in the input's dtype instead of float32.
        prune_temporary_fields: Delete the per-module ``sample_count`` / ``covariance_matrix`` after preprocessing.
    """

    cache_file: str | None = None
    covariance_file: str | None = None
    corda_method: Literal["ipm", "kpm"] = "ipm"
    verbose: bool = False
    use_float16_for_covariance: bool = False
    prune_temporary_fields: bool = True


@dataclass
class EvaConfig:
    """EVA (Paischer et al., 2024, "One Initialization to Rule them All: Explained Variance Adaptation").

    Attributes:
        rho: Largest rank one layer may receive, as a multiple of ``r`` (``>= 1``; ``1``: no redistribution).
        tau: Stop the incremental SVD of a layer when the cosine similarity of its components between two
            steps reaches ``tau`` (in ``[0, 1]``).
        use_label_mask: Leave out the positions whose label is ``label_mask_value``.
        label_mask_value: The label of ignored positions.
        whiten: Scale the components by the inverse singular values.
        adjust_scaling_factors: Keep ``alpha / r`` of each layer at its configured value after redistribution
            (``lora_alpha`` is rescaled with the new rank).

    Raises:
        ConfigError: ``rho < 1`` or ``tau`` outside ``[0, 1]``.
    """

    rho: float = 2.0
    tau: float = 0.99
    use_label_mask: bool = True
    label_mask_value: int = -100
    whiten: bool = False
    adjust_scaling_factors: bool = True

    def __post_init__(self) -> None:
        if self.rho < 1.0:
            raise ConfigError(f"EvaConfig: `rho` must be >= 1.0 (a layer's largest rank is rho * r), got {self.rho}.")
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"EvaConfig: `tau` must be between 0.0 and 1.0 (a cosine similarity), got {self.tau}.")


@dataclass
class LoftQConfig:
    """LoftQ (Li et al., 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models").

    Attributes:
        loftq_bits: Bits of the quantized base: 4 (NF4) or 8 (int8).
        loftq_iter: Alternating quantize / low-rank steps.
    """

    loftq_bits: int = 4
    loftq_iter: int = 1
