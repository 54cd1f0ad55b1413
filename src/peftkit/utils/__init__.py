"""PEFT's ``peft.utils`` import paths, for code written against PEFT (``import peftkit as peft``)."""
