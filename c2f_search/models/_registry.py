"""Models built by name (timm-style), each name tied to its family's phase adapter."""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn

from ..errors import C2FError, ScheduleError
from ..geometry import Geometry

_MODELS: dict[str, tuple[Callable[..., nn.Module], "ModelFamily"]] = {}


class ModelFamily:
    """A family's phase adapter: everything the training core needs to know about a model family.

    * ``time_granularity`` - input frames per time token at C = 1; full-resolution target lengths
      are multiples of it times the largest C (it replaces AST's hard-coded patch size 16);
    * ``min_mel_bins``     - the fewest mel bins its input layer takes;
    * ``methods``          - the compression methods it supports (None: all);
    * ``adapt_state_dict`` - move a state dict to another geometry (position embeddings, kernels);
      the default is a plain copy, right for a family without geometry-shaped parameters;
    * ``load_init``        - start from a pretrained file (never downloaded).
    """
    name: str = "family"
    time_granularity: int = 16
    min_mel_bins: int = 1
    methods: tuple[str, ...] | None = None

    def supports(self, method: str) -> bool:
        return self.methods is None or method in self.methods

    def check_method(self, model_name: str, method: str) -> None:
        if not self.supports(method):
            raise ScheduleError(f"model {model_name} ({self.name}) does not support the compression method "
                                f"{method!r}; choose one of {', '.join(self.methods)}")

    def time_tokens(self, geometry: Geometry) -> int:
        """Time tokens at full resolution (no compression): what every C must divide."""
        return geometry.frames // self.time_granularity

    def adapt_state_dict(self, sd: dict, old: nn.Module, new: nn.Module, method) -> dict:
        return sd

    def transfer(self, model: nn.Module, geometry: Geometry, method) -> nn.Module:
        """A model for `geometry` carrying every weight of `model`; loading is strict, so nothing is lost.
        The new model is built on the meta device and takes the moved tensors, so no random
        initialisation runs (and no RNG is drawn) at a transition."""
        device = next(model.parameters()).device
        new = create_model(model.model_name, geometry=geometry, device="meta", **model.model_kwargs)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sd = self.adapt_state_dict(sd, model, new, method)
        new.load_state_dict(sd, strict=True, assign=True)
        return new.to(device)

    def load_init(self, model: nn.Module, path) -> None:
        raise C2FError(f"--init: model family {self.name} cannot start from a pretrained file")


def register_model(name: str, family: ModelFamily):
    """Register a builder ``fn(geometry, num_classes, **kwargs) -> nn.Module`` under `name`."""
    def deco(fn):
        _MODELS[name] = (fn, family)
        return fn
    return deco


_discovered = False


def _discover() -> None:
    """Import every module of the package once, so each registers itself (a new one is one file)."""
    global _discovered
    if not _discovered:
        _discovered = True
        pkg = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__package__}.{info.name}")


def list_models() -> list[str]:
    _discover()
    return sorted(_MODELS)


def get_family(name_or_model) -> ModelFamily:
    name = name_or_model if isinstance(name_or_model, str) else name_or_model.model_name
    _discover()
    if name not in _MODELS:
        raise C2FError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _MODELS[name][1]


def create_model(name: str, geometry: Geometry, device=None, **kwargs) -> nn.Module:
    """Build a registered model for `geometry`. It keeps ``model_name``, ``model_kwargs`` and
    ``geometry``, so it can be rebuilt for another geometry."""
    get_family(name)  # raises for an unknown name
    fn, _ = _MODELS[name]
    with torch.device(device) if device is not None else nullcontext():
        model = fn(geometry=geometry, **kwargs)
    model.model_name, model.model_kwargs, model.geometry = name, dict(kwargs), geometry
    return model
