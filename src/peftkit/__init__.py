"""peftkit: parameter-efficient fine-tuning with PEFT's API and file format (``import peftkit as peft``)."""

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
    CheckpointError,
    ConcurrencyError,
    ConfigError,
    HotswapError,
    PeftkitError,
    TargetingError,
    UnsupportedError,
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
from peftkit.mapping import (
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peftkit.methods.adalora.config import AdaLoraConfig
from peftkit.methods.adalora.model import AdaLoraModel
from peftkit.methods.ia3.config import IA3Config
from peftkit.methods.ia3.model import IA3Model
from peftkit.methods.lora.config import LoraConfig
from peftkit.methods.p_tuning.config import PromptEncoderConfig, PromptEncoderReparameterizationType
from peftkit.methods.p_tuning.encoder import PromptEncoder
from peftkit.methods.prefix_tuning.config import PrefixTuningConfig
from peftkit.methods.prefix_tuning.encoder import PrefixEncoder
from peftkit.methods.prompt_tuning.config import PromptTuningConfig, PromptTuningInit
from peftkit.methods.prompt_tuning.embedding import PromptEmbedding
from peftkit.peft_model import PeftModel
from peftkit.tasks import (
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from peftkit.tuner import LoraModel
from peftkit.types import PeftType, TaskType

__version__ = "0.1.0"

__all__ = [
    "AdaLoraConfig",
    "AdaLoraModel",
    "AdapterNameError",
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
    "IA3Config",
    "IA3Model",
    "LoraConfig",
    "LoraModel",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PeftkitError",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PromptEmbedding",
    "PromptEncoder",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptLearningConfig",
    "PromptTuningConfig",
    "PromptTuningInit",
    "TargetingError",
    "TaskType",
    "UnsupportedError",
    "enable_adapter_methods",
    "get_peft_model",
    "get_peft_model_state_dict",
    "hotswap_adapter",
    "inject_adapter_in_model",
    "patch_transformers",
    "prepare_model_for_compiled_hotswap",
    "set_peft_model_state_dict",
    "unpatch_transformers",
]
