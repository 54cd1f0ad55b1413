"""LoRA on fused expert parameters (``target_parameters``) against the reference peft 0.21.2: adapters saved by
one library load in the other with the same outputs (unmerged and merged); both save the same config JSON,
tensor keys and shapes, and count the same parameters. Mixtral stores experts ``(E, out, in)``, gpt-oss
``(E, in, out)`` (``is_transposed``)."""

from __future__ import annotations

from tests.compat._cross import Adapter, compat_tests

BOTH = ["experts.gate_up_proj", "experts.down_proj"]
CASES = [
    Adapter("mixtral_experts", "LoraConfig", {"r": 2, "target_modules": [], "target_parameters": BOTH}, "mixtral"),
    # target_modules unset: no architecture default is added (PEFT saves target_modules=[])
    Adapter(
        "mixtral_defaults",
        "LoraConfig",
        {"r": 4, "lora_alpha": 8, "target_parameters": ["mlp.experts.down_proj"]},
        "mixtral",
        name="other",
    ),
    Adapter(
        "gpt_oss_experts",
        "LoraConfig",
        {"r": 2, "target_modules": [], "target_parameters": ["gate_up_proj", "down_proj"], "use_rslora": True},
        "gpt_oss",
    ),
]

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(CASES, CASES)
