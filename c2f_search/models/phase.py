"""Phase transitions: carry a model to the next phase's geometry. The model's family does the
work (``ModelFamily.transfer``); this module only dispatches."""

from __future__ import annotations

import torch.nn as nn

from ..compress import Method, get_method
from ..geometry import Geometry
from .base import create_model, get_family


def _method(method) -> Method:
    return get_method(method) if isinstance(method, str) else method


def build_for_phase(model_name: str, model_kwargs: dict, method, C: int, full: Geometry, device=None) -> nn.Module:
    """A fresh model whose geometry fits phase C of `method`, for full-resolution input `full`."""
    return create_model(model_name, geometry=_method(method).geometry(C, full), device=device, **model_kwargs)


def transfer_weights(model: nn.Module, geometry: Geometry, method) -> nn.Module:
    """A model for `geometry` carrying every weight of `model`, moved by its family's adapter
    (for AST: position embeddings resampled bilinearly, a stretched patch kernel moved by
    the method's PI or bilinear resize)."""
    return get_family(model).transfer(model, geometry, _method(method))


def move_to_phase(model: nn.Module, before, method, C: int, full: Geometry) -> nn.Module:
    """`model` (trained by method `before`) carried to phase C of `method`: moved only where the token grid
    changes (a token-dropping phase keeps it), its patch kernel by the rule of the wider patch's method. The
    one transition rule of ``Run`` and of ``CoarseToFine`` (a user's own loop)."""
    before, method = _method(before), _method(method)
    old, new = model.geometry, method.geometry(C, full)
    if new == old:
        return model
    return transfer_weights(model, new, method if new.time_stretch >= old.time_stretch else before)
