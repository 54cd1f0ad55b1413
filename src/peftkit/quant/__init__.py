"""Backends for quantized base layers (bitsandbytes 4-bit / 8-bit, torchao) and k-bit training preparation."""
