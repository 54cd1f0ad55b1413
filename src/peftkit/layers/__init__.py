"""The template adapter layer, module replacement and the modules_to_save wrapper."""
