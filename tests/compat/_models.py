"""Moved to :mod:`tests._tiny` (the one module of tiny models); these names stay importable from here for test
files written before the move."""

from tests._tiny import VOCAB, ConvNet, build_model, model_inputs, model_output, randomise_adapter

__all__ = ["VOCAB", "ConvNet", "build_model", "model_inputs", "model_output", "randomise_adapter"]
