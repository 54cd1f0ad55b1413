"""peftkit: parameter-efficient fine-tuning with PEFT's API and file format (``import peftkit as peft``)."""

from peftkit import tuners as tuners  # ``peft.tuners.*`` and ``peft.utils.*`` after a bare ``import peft``
from peftkit import utils as utils
from peftkit.arrow import create_arrow_model
from peftkit.auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from peftkit.config import PeftConfig, PromptLearningConfig
from peftkit.errors import (
    AdapterNameError,
    ArgumentTypeError,
    CheckpointError,
    ConcurrencyError,
    ConfigError,
    HotswapError,
    MergeError,
    NoMatchingPeftModuleError,
    PeftError,
    PeftkitError,
    PeftWarning,
    TargetingError,
    UnsupportedError,
    UsageError,
)
from peftkit.hotswap import hotswap_adapter, prepare_model_for_compiled_hotswap
from peftkit.integrations import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    enable_adapter_methods,
    patch_transformers,
    unpatch_transformers,
)
from peftkit.integrations.peft_alias import install_as_peft, install_if_reference_absent
from peftkit.io.base_state import get_base_model_state_dict, set_base_model_state_dict
from peftkit.io.load import load_peft_weights
from peftkit.mapping import (
    gather_peft_model_state_dict,
    get_peft_config,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peftkit.methods.lora.conversion import convert_to_lora, save_as_lora
from peftkit.mixed_model import PeftMixedModel
from peftkit.peft_model import PeftModel
from peftkit.peft_paths import (
    MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peftkit.peft_paths import publish as _publish_peft_paths
from peftkit.quant.prepare import cast_mixed_precision_params, prepare_model_for_kbit_training
from peftkit.registry import public_names as _public_names
from peftkit.status import get_layer_status, get_model_status
from peftkit.tasks import (
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from peftkit.types import PeftType, TaskType

__version__ = "0.1.0"

# Each method's public names (``LoraConfig``, ``IA3Model``, ``PromptEncoder``...) come from its spec's
# ``public_names``, so a new method is exported by its catalog line alone.
_METHOD_NAMES = _public_names()
globals().update(_METHOD_NAMES)

_publish_peft_paths()
# Answer to ``import peft`` when the reference is not installed (peftkit.integrations.peft_alias), last: the
# alias module copies this package's public names.
install_if_reference_absent()

__all__ = [
    "AdapterNameError",
    "ArgumentTypeError",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "CheckpointError",
    "ConcurrencyError",
    "ConfigError",
    "HotswapError",
    "MODEL_TYPE_TO_PEFT_MODEL_MAPPING",
    "MergeError",
    "NoMatchingPeftModuleError",
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "PeftConfig",
    "PeftError",
    "PeftMixedModel",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftWarning",
    "PeftType",
    "PeftkitError",
    "PromptLearningConfig",
    "TargetingError",
    "TaskType",
    "UnsupportedError",
    "UsageError",
    "cast_mixed_precision_params",
    "convert_to_lora",
    "create_arrow_model",
    "enable_adapter_methods",
    "gather_peft_model_state_dict",
    "get_base_model_state_dict",
    "get_layer_status",
    "get_model_status",
    "get_peft_config",
    "get_peft_model",
    "get_peft_model_state_dict",
    "hotswap_adapter",
    "inject_adapter_in_model",
    "install_as_peft",
    "load_peft_weights",
    "patch_transformers",
    "prepare_model_for_compiled_hotswap",
    "prepare_model_for_kbit_training",
    "save_as_lora",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    "unpatch_transformers",
    *sorted(_METHOD_NAMES),
]
