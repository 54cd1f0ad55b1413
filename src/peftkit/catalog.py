"""The explicit list of adapter methods: the one line a new method adds outside its own folder.

Each entry maps a method's on-disk name (the ``peft_type`` of ``adapter_config.json``) to where its
:class:`~peftkit.methods.spec.MethodSpec` lives, as ``"module:attribute"``. Plain strings, no imports: this
module sits at the bottom of the layers, so :mod:`peftkit.types` builds ``PeftType`` from its names before any
config class exists, and :mod:`peftkit.registry` (above the methods) imports each spec. The order is the order
of ``PeftType`` and of the command line's ``--method`` choices.
"""

from __future__ import annotations

METHOD_SPECS: dict[str, str] = {
    "LORA": "peftkit.methods.lora.method:LORA",
    "IA3": "peftkit.methods.ia3.method:IA3",
    "ADALORA": "peftkit.methods.adalora.method:ADALORA",
    "PROMPT_TUNING": "peftkit.methods.prompt_tuning.method:PROMPT_TUNING",
    "PREFIX_TUNING": "peftkit.methods.prefix_tuning.method:PREFIX_TUNING",
    "P_TUNING": "peftkit.methods.p_tuning.method:P_TUNING",
    "LOHA": "peftkit.methods.loha.method:LOHA",
    "LOKR": "peftkit.methods.lokr.method:LOKR",
    "VERA": "peftkit.methods.vera.method:VERA",
    "LN_TUNING": "peftkit.methods.ln_tuning.method:LN_TUNING",
    "TRAINABLE_TOKENS": "peftkit.methods.trainable_tokens.method:TRAINABLE_TOKENS",
    "OFT": "peftkit.methods.oft.method:OFT",
    "BOFT": "peftkit.methods.boft.method:BOFT",
}

#: The LoRA variants and initialisations peftkit implements, by PEFT's names for them. In PEFT's own terms these
#: are separate methods built on LoRA, configured through ``LoraConfig`` (``use_dora=True``,
#: ``init_lora_weights="pissa"`` or ``"pissa_niter_N"``, ...). PEFT's test-suite runner (``scripts/peft_suite.py``,
#: whose plugin holds the whole vocabulary: PEFT's other variants are ``alora``, ``qalora``, ``velora``, ``bdlora``,
#: ``monteclora``, ``arrow``, ``corda``, ``eva``, ``loftq``, ``lora_ga``, ...) counts a test in scope only when every
#: variant it configures is listed here; ``tests/unit/test_peft_suite_script.py`` checks that ``LoraConfig``
#: accepts exactly these.
LORA_VARIANTS: frozenset[str] = frozenset(
    (
        "bdlora",
        "dora",
        "gaussian",
        "pissa",
        "olora",
        "orthogonal",
        "mica",
        "lora_ga",
        "arrow",
        "target_parameters",
        "trainable_tokens",
        "corda",
        "eva",
        "loftq",
        "kasa",
        "monteclora",
        "velora",
    )
)
