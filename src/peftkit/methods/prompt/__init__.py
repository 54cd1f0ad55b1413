"""Machinery shared by the prompt methods: encoder base, model dimensions, cache layouts, input extension,
the prompt-adapter manager and the forward / generate paths of prompt-method models."""
