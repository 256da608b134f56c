"""Temporal compression methods: one module per method, each a ``Method`` (the contract, ``base.py``),
registered by name: none, fshift, avgpool, maxpool, patch-bl, patch-pi, tpatchout, fpatchout, patchout."""

from ._patch import pi_resize
from .base import METHODS, Capability, Method, baseline_method, compress, get_method, list_methods, register_method

__all__ = [
    "Method",
    "METHODS",
    "register_method",
    "get_method",
    "list_methods",
    "baseline_method",
    "compress",
    "Capability",
    "pi_resize",
]
