"""Forward and generation of prompt-method models, called by the ``PeftModelFor*`` task classes.

Two ways to feed ``n`` virtual tokens to the model:

* *prepended embeddings* (prompt tuning, P-tuning): ``inputs_embeds = [prompts ; embed(input_ids)]``, the
  attention mask gets ``n`` ones in front and causal-LM labels ``n`` times ``-100`` (no loss on virtual tokens);
* *key/value prefix* (prefix tuning): every attention layer sees ``n`` extra keys and values through the cache
  (``past_key_values``), the attention mask gets ``n`` ones in front and position ids shift by ``n``.

For encoder-decoder models prompts go to the encoder; a prefix goes to the decoder's self-attention.
Generation patches the base model's ``prepare_inputs_for_generation`` for the duration of ``generate``, so the
prompt is injected at the first step (when the cache is empty) and the mask is extended at every step.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from peftkit.errors import ArgumentTypeError, UnsupportedError, UsageError
from peftkit.methods.prompt.inputs import (
    adjust_positions,
    batch_size_of,
    drop_token_type_ids,
    extend_attention_mask,
    extend_labels,
    extend_token_type_ids,
    prepend,
)
from peftkit.methods.prompt.tuner import PromptTuner
from peftkit.types import TaskType

#: Tasks whose forward prompt methods support (token classification and QA would need per-token outputs
#: for the virtual tokens, which PEFT does not handle either).
PROMPT_TASKS = (TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM, TaskType.SEQ_CLS, TaskType.FEATURE_EXTRACTION)


def check_task(task: TaskType | None) -> None:
    """Refuse tasks the prompt methods cannot serve, at creation time rather than at the first forward."""
    if task is not None and task not in PROMPT_TASKS:
        supported = ", ".join(t.value for t in PROMPT_TASKS)
        raise UnsupportedError(f"Prompt methods are not implemented for task {task.value}; supported: {supported}.")


# -- forward ------------------------------------------------------------------------------------------
def prompt_forward(tuner: PromptTuner, task: TaskType | None, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Run the base model with the active prompt adapter for ``task`` (keyword inputs as transformers takes)."""
    if kwargs.pop("adapter_names", None) is not None:
        raise UnsupportedError("adapter_names (mixed batches) is not available for prompt methods.")
    kwargs.pop("task_ids", None)
    if tuner.disabled:
        return tuner.model(*args, **kwargs)
    if args:
        raise ArgumentTypeError("Pass the inputs of a prompt-method model as keyword arguments (input_ids=..., ...).")
    if task is None:
        raise UnsupportedError(
            "A prompt adapter needs a task-specific wrapper to know where the virtual tokens go; set task_type "
            "(CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS or FEATURE_EXTRACTION) in the config."
        )
    check_task(task)
    forward = {TaskType.CAUSAL_LM: _causal_lm_forward, TaskType.SEQ_2_SEQ_LM: _seq2seq_forward}.get(task)
    return (forward or functools.partial(_encoder_task_forward, task=task))(tuner, kwargs)


def _common(tuner: PromptTuner, kwargs: dict[str, Any]) -> tuple[int, int, bool]:
    """``(batch_size, n, kv_prefix)`` of a call; fixes position ids in ``kwargs``."""
    config, encoder = tuner.active()
    n = int(config.num_virtual_tokens)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    adjust_positions(kwargs, n, encoder.kv_prefix)
    return batch_size_of(kwargs.get("input_ids"), kwargs.get("inputs_embeds")), n, encoder.kv_prefix


def _embedded(tuner: PromptTuner, kwargs: dict[str, Any], batch: int, n: int) -> None:
    """Replace ``input_ids`` / ``inputs_embeds`` in ``kwargs`` by the first ``n`` prompts + the input embeddings."""
    input_ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
    embeds = tuner.word_embeddings(input_ids) if embeds is None else embeds
    kwargs["inputs_embeds"] = prepend(tuner.prompts(batch)[:, :n], embeds)


def _causal_lm_forward(tuner: PromptTuner, kwargs: dict[str, Any]) -> Any:
    batch, n, kv_prefix = _common(tuner, kwargs)
    drop_token_type_ids(kwargs)
    kwargs["attention_mask"] = extend_attention_mask(kwargs.get("attention_mask"), n)
    if kv_prefix:
        kwargs["past_key_values"] = tuner.past_key_values(batch)
    else:
        _embedded(tuner, kwargs, batch, n)
        kwargs["labels"] = extend_labels(kwargs.get("labels"), n)
    return tuner.model(**kwargs)


def _seq2seq_forward(tuner: PromptTuner, kwargs: dict[str, Any]) -> Any:
    batch, n, kv_prefix = _common(tuner, kwargs)
    drop_token_type_ids(kwargs)
    if kv_prefix:
        kwargs["decoder_attention_mask"] = extend_attention_mask(kwargs.get("decoder_attention_mask"), n)
        kwargs["past_key_values"] = tuner.past_key_values(batch)
    else:
        kwargs["attention_mask"] = extend_attention_mask(kwargs.get("attention_mask"), n)
        _embedded(tuner, kwargs, batch, n)
    return tuner.model(**kwargs)


def _encoder_task_forward(tuner: PromptTuner, kwargs: dict[str, Any], task: TaskType) -> Any:
    batch, n, kv_prefix = _common(tuner, kwargs)
    if task != TaskType.SEQ_CLS:
        drop_token_type_ids(kwargs)
    kwargs["attention_mask"] = extend_attention_mask(kwargs.get("attention_mask"), n)
    if kv_prefix:
        if "past_key_values" not in inspect.signature(tuner.model.forward).parameters:
            raise UnsupportedError(
                f"{type(tuner.model).__name__}.forward takes no past_key_values, so prefix tuning cannot reach it."
            )
        kwargs["past_key_values"] = tuner.past_key_values(batch)
    else:
        token_types = extend_token_type_ids(kwargs.pop("token_type_ids", None), n)
        if token_types is not None:
            kwargs["token_type_ids"] = token_types
        _embedded(tuner, kwargs, batch, n)
    return tuner.model(**kwargs)


# -- generation ---------------------------------------------------------------------------------------
@contextmanager
def patched_prepare(model: Any, wrapper: Callable[..., dict[str, Any]]) -> Iterator[None]:
    """Within the block ``model.prepare_inputs_for_generation`` is ``wrapper(original, *args, **kwargs)``."""
    had_own = "prepare_inputs_for_generation" in model.__dict__
    original = model.prepare_inputs_for_generation
    model.prepare_inputs_for_generation = functools.partial(wrapper, original)
    try:
        yield
    finally:
        if had_own:
            model.prepare_inputs_for_generation = original
        else:
            del model.prepare_inputs_for_generation


def prompt_generate(tuner: PromptTuner, task: TaskType | None, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``generate`` of the base model with the active prompt adapter (causal LM or seq2seq LM)."""
    kwargs.pop("task_ids", None)
    if tuner.disabled:
        return tuner.model.generate(*args, **kwargs)
    if task == TaskType.CAUSAL_LM:
        with patched_prepare(tuner.model, functools.partial(prepare_causal_lm_inputs, tuner)):
            return tuner.model.generate(*args, **kwargs)
    if task == TaskType.SEQ_2_SEQ_LM:
        return _seq2seq_generate(tuner, args, kwargs)
    raise UnsupportedError(f"generate with a prompt adapter needs a CAUSAL_LM or SEQ_2_SEQ_LM model, not {task}.")


def _single_mask(mask: Any) -> Any:
    if isinstance(mask, dict):
        if len(mask) != 1:
            raise UnsupportedError(f"Prompt methods handle one attention mask during generation, got {list(mask)}.")
        return next(iter(mask.values()))
    return mask


def prepare_causal_lm_inputs(tuner: PromptTuner, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The base model's ``prepare_inputs_for_generation``, then: the mask extended by ``n`` at every step, and
    at the first step (empty cache) the prompt injected as prepended embeddings or as the cache itself."""
    inputs = original(*args, **kwargs)
    config, encoder = tuner.active()
    n = int(config.num_virtual_tokens)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    cache = inputs.get("past_key_values")
    cached = cache.get_seq_length() if cache is not None else 0
    input_ids = inputs.get("input_ids")
    if cached and input_ids is not None and cached >= input_ids.shape[1]:
        inputs["input_ids"] = input_ids = input_ids[:, -1:]
    if inputs.get("attention_mask") is not None:
        inputs["attention_mask"] = extend_attention_mask(_single_mask(inputs["attention_mask"]), n)
    adjust_positions(inputs, n, encoder.kv_prefix, warn=False)
    drop_token_type_ids(inputs, warn=False)
    if cached == 0:
        batch = batch_size_of(input_ids, inputs.get("inputs_embeds"))
        if encoder.kv_prefix:
            inputs["past_key_values"] = tuner.past_key_values(batch)
        else:
            _embedded(tuner, inputs, batch, n)
            inputs["input_ids"] = None
    return inputs


def prepare_seq2seq_prefix_inputs(tuner: PromptTuner, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The base model's ``prepare_inputs_for_generation``; at the first step the cache becomes the prefix."""
    inputs = original(*args, **kwargs)
    first = kwargs.get("is_first_iteration")
    if first is None:
        cache = inputs.get("past_key_values")
        first = cache is None or cache.get_seq_length() == 0
    if first:
        inputs["past_key_values"] = tuner.past_key_values(inputs["decoder_input_ids"].shape[0])
    return inputs


def _seq2seq_generate(tuner: PromptTuner, args: tuple, kwargs: dict[str, Any]) -> Any:
    config, encoder = tuner.active()
    n = int(config.num_virtual_tokens)  # type: ignore[arg-type]  # prompt dimensions are filled in from the model config before this runs
    adjust_positions(kwargs, n, encoder.kv_prefix)
    drop_token_type_ids(kwargs)
    if encoder.kv_prefix:
        with patched_prepare(tuner.model, functools.partial(prepare_seq2seq_prefix_inputs, tuner)):
            return tuner.model.generate(*args, **kwargs)
    if args:
        kwargs["input_ids"], args = args[0], args[1:]
    if kwargs.get("input_ids") is None:
        raise UsageError("generate with a prompt adapter on a seq2seq model needs input_ids.")
    if kwargs.pop("encoder_outputs", None) is not None:
        warnings.warn("encoder_outputs are ignored by generate with a prompt adapter.", stacklevel=3)
    batch = int(kwargs["input_ids"].shape[0])
    kwargs["attention_mask"] = extend_attention_mask(kwargs.get("attention_mask"), n)
    _embedded(tuner, kwargs, batch, n)
    return tuner.model.generate(*args, **{k: v for k, v in kwargs.items() if v is not None})
