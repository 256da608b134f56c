"""Models built by name from a registry (timm-style): ``create_model('ast-tiny', ...)``."""
from ._registry import create_model, list_models, register_model
from . import ast  # noqa: F401  (registers the AST family)

__all__ = ["create_model", "list_models", "register_model"]
