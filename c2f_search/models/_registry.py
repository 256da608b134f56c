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
    * ``load_init``        - start from a pretrained file (never downloaded);
    * ``settings``         - the model settings (``TrainConfig.model_kwargs``) its builders take.
    """
    name: str = "family"
    time_granularity: int = 16
    min_mel_bins: int = 1
    methods: tuple[str, ...] | None = None
    settings: tuple[str, ...] = ()
    head: tuple[str, ...] = ("head.",)  # classifier keys: start fresh when the number of classes differs
    pretraining_keys: tuple[str, ...] = ()  # keys only self-supervised pretraining uses

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
        return materialize(new, sd, device)

    def load_init(self, model: nn.Module, path) -> None:
        """Start from a local file (never downloaded); every family reads c2f-search checkpoints."""
        from ..io import load_checkpoint
        state = load_checkpoint(path)
        if not is_run_state(state):
            raise C2FError(f"--init {path}: {model.model_name} starts only from a c2f-search checkpoint "
                           f"(final.pt, last.pt)")
        self.init_from_run(model, state, path)

    def init_from_run(self, model: nn.Module, state: dict, path) -> None:
        """Take the weights of a c2f-search run state (another geometry, another classifier allowed):
        moved by ``adapt_state_dict``, the classifier kept only where the number of classes matches."""
        src_family = get_family(state["model_name"])
        if not isinstance(src_family, type(self)):
            raise C2FError(f"--init {path}: a checkpoint of {state['model_name']} ({src_family.name}), which "
                           f"{model.model_name} ({self.name}) cannot start from")
        src = create_model(state["model_name"], geometry=Geometry(**state["geometry"]), device="meta",
                           **state["model_kwargs"])
        try:
            src.load_state_dict(state["model"], strict=True, assign=True)
        except RuntimeError as e:
            raise C2FError(f"--init {path}: its weights do not fit its own model ({str(e).splitlines()[0]})") from None
        sd = self.adapt_state_dict(dict(src.state_dict()), src, model, PI_KERNEL)
        own = model.state_dict()
        # a self-supervised encoder's pretraining heads have no place in a supervised model
        sd = {k: v for k, v in sd.items() if k in own or not k.startswith(src_family.pretraining_keys)}
        load_matching(model, sd, path, self.head)


class _PIKernel:  # how a kernel moves at --init: PI-resize keeps its tokens
    kernel_resize = "pi"


PI_KERNEL = _PIKernel()


def is_run_state(state: dict) -> bool:
    return isinstance(state.get("model"), dict) and "model_name" in state


def load_matching(model: nn.Module, sd: dict, path, head=("head.",), may_miss=()) -> None:
    """Load `sd` into `model`: every non-classifier weight must be there with its shape."""
    own = model.state_dict()
    for k in [k for k in sd if k.startswith(head) and k in own and sd[k].shape != own[k].shape]:
        sd.pop(k)  # another number of classes: this classifier starts fresh
    bad = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    missing = [k for k in own if k not in sd and not k.startswith(head) and not k.startswith(tuple(may_miss))]
    unexpected = [k for k in sd if k not in own]
    if bad or missing or unexpected:
        raise C2FError(f"--init {path}: the checkpoint does not fit {model.model_name} (shape differs: {bad[:3]}, "
                       f"missing: {missing[:3]}, unexpected: {unexpected[:3]}); pick the matching --model width "
                       f"and --depth")
    model.load_state_dict(sd, strict=False)


def materialize(model: nn.Module, sd: dict, device) -> nn.Module:
    """Load `sd` strictly into a model built on the meta device, then rebuild the buffers a state dict
    does not hold (timm's convention: ``init_non_persistent_buffers``, e.g. Swin's window masks)."""
    model.load_state_dict(sd, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            mod_name, _, leaf = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            mod.register_buffer(leaf, torch.empty_like(buf, device=device), persistent=False)
    model.to(device)
    for mod in model.modules():
        if hasattr(mod, "init_non_persistent_buffers"):
            mod.init_non_persistent_buffers()
    return model


def load_model(name: str, geometry: Geometry, kwargs: dict, sd: dict, device="cpu") -> nn.Module:
    """A registered model for `geometry` holding exactly the weights `sd` (no random initialisation)."""
    return materialize(create_model(name, geometry=geometry, device="meta", **kwargs), sd, device)


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
