"""Adapter methods, one package each (config, layer, method spec). The registry lists them."""
