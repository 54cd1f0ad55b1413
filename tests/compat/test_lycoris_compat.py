"""LoHa and LoKr compatibility with the reference peft 0.21.2: adapters saved by one library load in the other
with the same outputs (unmerged and merged); both save the same config JSON, tensor keys and shapes, and print
the same trainable-parameter line. Covers flat and CP (``use_effective_conv2d``) kernels on Conv1d / Conv2d,
LoKr's full and low-rank factors (``decompose_both``, ``decompose_factor``), patterns and non-default names."""

from __future__ import annotations

from tests.compat._cross import Adapter, compat_tests

CAUSAL = {"task_type": "CAUSAL_LM"}
LOHA = [
    Adapter("loha_llama_defaults", "LoHaConfig", {**CAUSAL, "r": 2}),
    Adapter(
        "loha_all_linear_patterns",
        "LoHaConfig",
        {
            "target_modules": "all-linear",
            "r": 2,
            "alpha": 3,
            "rank_pattern": {"v_proj": 3},
            "alpha_pattern": {"down_proj": 5},
            "rank_dropout": 0.2,
            "module_dropout": 0.1,
        },
        name="other",
    ),
    Adapter(
        "loha_lm_head_saved", "LoHaConfig", {**CAUSAL, "r": 2, "init_weights": False, "modules_to_save": ["lm_head"]}
    ),
    Adapter(
        "loha_conv2d_cp",
        "LoHaConfig",
        {"target_modules": ["conv", "lin"], "r": 2, "use_effective_conv2d": True},
        "convnet",
    ),
    Adapter("loha_conv1d_flat", "LoHaConfig", {"target_modules": ["conv"], "r": 2}, "conv1dnet"),
    Adapter(
        "loha_conv1d_cp",
        "LoHaConfig",
        {"target_modules": ["conv"], "r": 2, "use_effective_conv2d": True, "init_weights": False},
        "conv1dnet",
    ),
]
LOKR = [
    Adapter("lokr_llama_defaults", "LoKrConfig", {**CAUSAL, "r": 2}),
    Adapter(
        "lokr_decompose_both",
        "LoKrConfig",
        {
            "target_modules": ["q_proj", "down_proj", "up_proj"],
            "r": 1,
            "decompose_both": True,
            "decompose_factor": 4,
            "rank_dropout_scale": True,
            "alpha_pattern": {"up_proj": 2},
        },
        name="other",
    ),
    Adapter("lokr_full_factors", "LoKrConfig", {**CAUSAL, "r": 16, "rank_pattern": {"v_proj": 1}}),
    Adapter(
        "lokr_conv2d_cp_lycoris_init",
        "LoKrConfig",
        {"target_modules": ["conv"], "r": 1, "use_effective_conv2d": True, "init_weights": "lycoris"},
        "convnet",
    ),
    Adapter("lokr_conv1d_full_w2", "LoKrConfig", {"target_modules": ["conv", "lin"], "r": 8}, "conv1dnet"),
    Adapter("lokr_conv1d_low_rank", "LoKrConfig", {"target_modules": ["conv"], "r": 1}, "conv1dnet"),
]

test_cross_load, test_saved_files_and_parameter_counts_match = compat_tests(LOHA + LOKR, LOHA + LOKR)
