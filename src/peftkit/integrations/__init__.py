"""transformers integration: adapter methods on every model, adapter-aware Auto classes, Trainer checkpoints."""

from peftkit.integrations.auto_models import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from peftkit.integrations.patch import is_patched, patch_transformers, unpatch_transformers
from peftkit.integrations.trainer import load_adapter_checkpoint, save_adapter_checkpoint
from peftkit.integrations.transformers import AdapterModelMixin, enable_adapter_methods

__all__ = [
    "AdapterModelMixin",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "enable_adapter_methods",
    "is_patched",
    "load_adapter_checkpoint",
    "patch_transformers",
    "save_adapter_checkpoint",
    "unpatch_transformers",
]
