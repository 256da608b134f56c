"""Models built by name (timm-style), each name tied to its family's phase adapter."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import C2FError, ConfigError, ScheduleError
from ..geometry import Capability, Geometry
from ..registry import Registry
from .pretrained import InitMismatch, InitNotForFamily

MODELS: Registry[tuple[Callable[..., nn.Module], ModelFamily]] = Registry(
    "model",
    __package__,
    lambda name, names: ConfigError("model", f"unknown model {name!r}; choose one of {', '.join(names)}"),
)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Setting:
    """One model setting (``TrainConfig.model_kwargs``) a family's builders take: its type, range and
    help. The CLI's model flags are generated from the settings of every registered family."""

    name: str
    type: type  # int, float or bool
    help: str
    low: float | None = None  # inclusive
    high: float | None = None  # exclusive

    def check(self, v) -> None:
        if self.type is bool:
            ok, want = isinstance(v, bool), "true or false"
        elif self.type is int:
            ok, want = isinstance(v, int) and not isinstance(v, bool) and v >= self.low, f"an integer >= {self.low:g}"
        else:
            ok, want = _number(v) and self.low <= v < self.high, f"in [{self.low:g}, {self.high:g})"
        if not ok:
            raise ConfigError(self.name, f"must be {want}, got {v!r}")


DEPTH = Setting("depth", int, "transformer depth (default: the model's, 12; Swin: blocks in every stage)", 1)
DIST_TOKEN = Setting("dist_token", bool, "add DeiT's distillation token (2 prefix tokens)")
STRIDE = Setting("stride", int, "patch stride for overlapping patches (AST used 10; default 16)", 1)
DROP_PATH = Setting("drop_path_rate", float, "stochastic depth rate (default 0)", 0, 1)


class ModelFamily(ABC):
    """A family's phase adapter: everything the training core needs to know about a model family.

    * ``provides``         - the capabilities it offers compression methods (``Capability``); a
      method that needs one it lacks is refused, naming both;
    * ``time_granularity`` - input frames per time token at C = 1; full-resolution target lengths
      are multiples of it times the largest C;
    * ``min_mel_bins``     - the fewest mel bins its input layer takes;
    * ``settings``         - the schema of the model settings its builders take (``Setting``);
    * ``adapt_state_dict`` - move a state dict to another geometry (position embeddings, kernels);
      the default is a plain copy, right for a family without geometry-shaped parameters;
    * ``load_init``        - start from a pretrained file (never downloaded).
    """

    name: str = "family"
    time_granularity: int = 16
    min_mel_bins: int = 1
    settings: tuple[Setting, ...] = ()
    head: tuple[str, ...] = ("head.",)  # classifier keys: start fresh when the number of classes differs
    pretraining_keys: tuple[str, ...] = ()  # keys only self-supervised pretraining uses

    @property
    @abstractmethod
    def provides(self) -> frozenset[Capability]:
        """The capabilities this family offers (a class attribute in a subclass)."""

    def check_method(self, model_name: str, method) -> None:
        """Refuse a compression method that needs a capability this family does not provide."""
        from ..compress import METHODS

        missing = method.needs - self.provides
        if missing:
            ok = [n for n, m in METHODS.items() if m.needs <= self.provides]
            raise ScheduleError(
                f"model {model_name} ({self.name}) does not support the compression method "
                f"{method.name!r}: it needs {' and '.join(c.value for c in missing)}, which "
                f"{self.name} does not provide; choose one of {', '.join(ok)}"
            )

    def check_schedule(self, model_name: str, schedule) -> None:
        """Refuse a schedule one of whose phases' methods needs a capability this family does not provide."""
        from ..compress import get_method

        for name in schedule.methods:
            self.check_method(model_name, get_method(name))

    def check_settings(self, model_name: str, kwargs: dict) -> None:
        mine = {s.name: s for s in self.settings}
        for k, v in kwargs.items():
            if k not in model_settings():
                raise ConfigError(k, f"unknown model setting; known: {', '.join(sorted(model_settings()))}")
            if k not in mine:
                raise ConfigError(k, f"{model_name} does not take this setting; it takes {', '.join(mine) or 'none'}")
            mine[k].check(v)

    def quantum(self, Cs) -> int:
        """Full-resolution lengths are multiples of this: frames per time token times the largest C of a phase
        that changes the token grid (so every such C divides the time tokens)."""
        return self.time_granularity * max(Cs, default=1)

    def time_tokens(self, geometry: Geometry) -> int:
        """Time tokens at full resolution (no compression): what every C must divide."""
        return geometry.frames // self.time_granularity

    def check_geometry(self, model_name: str, full: Geometry, Cs) -> None:
        """The full-resolution input fits this family and every C divides its time tokens."""
        g = self.time_granularity
        if full.num_mel_bins < self.min_mel_bins:
            raise ConfigError(
                "num_mel_bins",
                f"{full.num_mel_bins} is fewer than the {self.min_mel_bins} that "
                f"{model_name} needs (its patch height); use at least {self.min_mel_bins}",
            )
        if full.frames % g:
            raise ConfigError(
                "target_length",
                f"{full.frames} frames is not a multiple of {g}, the time "
                f"granularity of {model_name}; use e.g. {math.ceil(full.frames / g) * g}",
            )
        tokens = self.time_tokens(full)
        for C in Cs:
            if tokens % C:
                ok = [c for c in (8, 4, 2) if tokens % c == 0]
                raise ScheduleError(
                    f"C={C} does not divide the {tokens} time tokens of the full-resolution input "
                    f"({full.frames} frames / {g}); use C in {ok or [1]} or a --target-length "
                    f"that is a multiple of {g * C}"
                )

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
        from ..files import load_checkpoint

        p = Path(path)  # a folder (Hugging Face) or a safetensors file: not a c2f-search checkpoint
        state = {} if p.is_dir() or p.suffix == ".safetensors" else load_checkpoint(path)
        if not is_run_state(state):
            raise InitNotForFamily(
                f"--init {path}: {model.model_name} starts only from a c2f-search checkpoint (final.pt, last.pt)"
            )
        self.init_from_run(model, state, path)

    def init_from_run(self, model: nn.Module, state: dict, path) -> None:
        """Take the weights of a c2f-search run state (another geometry, another classifier allowed):
        moved by ``adapt_state_dict``, the classifier kept only where the number of classes matches."""
        src_family = get_family(state["model_name"])
        if not isinstance(src_family, type(self)):
            raise InitNotForFamily(
                f"--init {path}: a checkpoint of {state['model_name']} ({src_family.name}), which "
                f"{model.model_name} ({self.name}) cannot start from"
            )
        src = create_model(
            state["model_name"], geometry=Geometry(**state["geometry"]), device="meta", **state["model_kwargs"]
        )
        try:
            src.load_state_dict(state["model"], strict=True, assign=True)
        except RuntimeError as e:
            raise C2FError(f"--init {path}: its weights do not fit its own model ({str(e).splitlines()[0]})") from None
        from ..compress import baseline_method, get_method  # the default kernel move: PI, which keeps tokens

        sd = self.adapt_state_dict(dict(src.state_dict()), src, model, get_method(baseline_method()))
        own = model.state_dict()
        # a self-supervised encoder's pretraining heads have no place in a supervised model
        sd = {k: v for k, v in sd.items() if k in own or not k.startswith(src_family.pretraining_keys)}
        load_matching(model, sd, path, self.head)


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
    if bad:
        k = bad[0]
        raise InitMismatch(
            f"--init {path}: does not fit {model.model_name}: {k} is {tuple(sd[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the model; pick the matching --model width and --depth"
        )
    if missing or unexpected:
        raise InitMismatch(
            f"--init {path}: does not fit {model.model_name} (missing: {missing[:3]}, unexpected: "
            f"{unexpected[:3]}); pick the matching --model width and --depth"
        )
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
        MODELS.register(name, (fn, family))
        return fn

    return deco


def list_models() -> list[str]:
    return MODELS.names()


def model_settings() -> dict[str, Setting]:
    """Every setting some registered family takes, by name: the CLI's model flags."""
    return {st.name: st for _, (_, fam) in MODELS.items() for st in fam.settings}


def get_family(name_or_model) -> ModelFamily:
    name = name_or_model if isinstance(name_or_model, str) else name_or_model.model_name
    return MODELS.get(name)[1]


def create_model(name: str, geometry: Geometry, device=None, **kwargs) -> nn.Module:
    """Build a registered model for `geometry`. It keeps ``model_name``, ``model_kwargs`` and
    ``geometry``, so it can be rebuilt for another geometry."""
    fn, _ = MODELS.get(name)
    with torch.device(device) if device is not None else nullcontext():
        model = fn(geometry=geometry, **kwargs)
    model.model_name, model.model_kwargs, model.geometry = name, dict(kwargs), geometry
    return model
