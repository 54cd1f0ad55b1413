"""The prompt tuning encoder: a plain table of ``T`` trainable virtual token embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.errors import ConfigError
from peftkit.methods.prompt.encoder import PromptEncoderBase
from peftkit.methods.prompt_tuning.config import PromptTuningConfig, PromptTuningInit


def initial_token_ids(config: PromptTuningConfig, vocab_size: int, num_tokens: int) -> torch.Tensor:
    """The token ids whose word embeddings start the prompt (``TEXT`` or ``SAMPLE_VOCAB``).

    ``SAMPLE_VOCAB``: ``num_tokens`` uniform ids in ``[0, vocab_size)``. ``TEXT``: the tokenized init text,
    cut to ``num_tokens`` or repeated until it is that long.
    """
    if config.prompt_tuning_init == PromptTuningInit.SAMPLE_VOCAB:
        return torch.randint(0, vocab_size, (num_tokens,), dtype=torch.long)
    from transformers import AutoTokenizer

    kwargs = {k: v for k, v in (config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise ConfigError(f"prompt_tuning_init_text={config.prompt_tuning_init_text!r} tokenizes to no tokens.")
    return torch.tensor((ids * math.ceil(num_tokens / len(ids)))[:num_tokens], dtype=torch.long)


class PromptEmbedding(PromptEncoderBase):
    """Prompt tuning's encoder: ``embedding.weight`` ``(T, token_dim)`` *is* the prompt (no reparameterisation).

    Args:
        config: The prompt tuning config, with model dimensions filled in.
        word_embeddings: The model's input embedding (used by ``TEXT`` / ``SAMPLE_VOCAB`` initialisation).
        init_weights: ``False`` skips initialisation (weights are about to be loaded).

    Input ``(batch, T)`` ids -> output ``(batch, T, token_dim)``.
    """

    def __init__(
        self, config: PromptTuningConfig, word_embeddings: nn.Embedding | None = None, init_weights: bool = True
    ) -> None:
        super().__init__(config, table=config.inference_mode)
        if not init_weights or config.inference_mode or config.prompt_tuning_init == PromptTuningInit.RANDOM:
            return
        if word_embeddings is None:
            raise ConfigError(
                f"prompt_tuning_init={PromptTuningInit(config.prompt_tuning_init).value} needs the model's word "
                "embeddings."
            )
        ids = initial_token_ids(config, int(word_embeddings.num_embeddings), self.embedding.num_embeddings)
        weight = next(word_embeddings.parameters())
        with torch.no_grad():
            start = word_embeddings(ids.to(weight.device)).detach().to(torch.float32)
        self.embedding.weight = nn.Parameter(start)

    @classmethod
    def output_is_parameter(cls, config: PromptTuningConfig) -> bool:  # type: ignore[override]  # each encoder takes its own method's config (subclass of the base's)
        """``True``: the virtual-token embeddings are the parameters themselves."""
        return True
