"""The options of Arrow routing (Ostapenko et al., 2024, "Towards Modular LLMs by Building and Reusing a Library of
LoRAs", arXiv:2405.11157) with the optional GenKnowSub refinement (Bhardwaj et al., ACL 2025, "GenKnowSub: Improving
Modularity and Reusability of LLMs through General Knowledge Subtraction"):
``LoraConfig(arrow_config=ArrowConfig(...))``, built by :func:`~peftkit.methods.lora.arrow.create_arrow_model`.

Saved inside ``adapter_config.json`` as a nested object with PEFT's field names (the expert names included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftkit.errors import ConfigError


@dataclass
class ArrowConfig:
    """How the Arrow router mixes the task experts (LoRA adapters) of a layer for each token.

    Attributes:
        top_k: Experts mixed per token, a positive integer (default 3).
        router_temperature: Softmax temperature of the mixing coefficients, positive (default 1.0).
        use_gks: GenKnowSub: subtract the mean of the general adapters' ``A`` and ``B`` from every task expert's
            before routing (default ``False``).
        rng_seed: Seed of the power iteration's start vector (``None``: the global random state).
        task_adapter_names: The task experts' adapter names (set by ``create_arrow_model``).
        gks_adapter_names: The general adapters' names (set by ``create_arrow_model``).

    Raises:
        ConfigError: ``top_k`` or ``router_temperature`` is not positive.
    """

    top_k: int = 3
    router_temperature: float = 1.0
    use_gks: bool = False
    task_adapter_names: list[str] | None = field(default=None, init=False)
    gks_adapter_names: list[str] | None = field(default=None, init=False)
    rng_seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k <= 0:
            raise ConfigError(f"ArrowConfig.top_k must be a positive integer, got {self.top_k!r}.")
        temperature = self.router_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"ArrowConfig.router_temperature must be a positive number, got {temperature!r}.")
