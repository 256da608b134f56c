"""The ``c2f-search`` command line: ``main`` and one module per command."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
