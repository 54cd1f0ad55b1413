"""Trainable tokens: only chosen rows of an embedding table train (PEFT's TrainableTokens)."""
