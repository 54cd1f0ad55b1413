"""Merging adapters into base weights."""
