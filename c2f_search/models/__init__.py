"""Models built by name (timm-style): ``create_model('ast-tiny', geometry=..., num_classes=10)``.

One file per family; each registers its names with its phase adapter (``ModelFamily``). A new
family is one file in this package: it is found and registered on first use.
"""

from .base import (
    DEPTH,
    DIST_TOKEN,
    DROP_PATH,
    MODELS,
    STRIDE,
    ModelFamily,
    Setting,
    create_model,
    get_family,
    list_models,
    load_model,
    model_settings,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelFamily",
    "Setting",
    "create_model",
    "get_family",
    "list_models",
    "load_model",
    "model_settings",
    "register_model",
    "DEPTH",
    "DIST_TOKEN",
    "STRIDE",
    "DROP_PATH",
]
