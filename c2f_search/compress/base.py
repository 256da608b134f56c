"""Temporal compression methods: one module per method, each a small class behind one contract,
registered by name (Composer-style: a pure function at each method's core).

A method says, for a compression factor C:
  * ``needs``            - the capabilities it needs from a model family (``Capability``);
  * ``frame_shift``      - the fbank frame shift its features are read at;
  * ``feature_length``   - how many frames those features are cut or padded to;
  * ``transform``        - what it does to a batch of those features (on the device);
  * ``time_mask_scale``  - how much shorter the time axis is, so SpecAugment's time mask shrinks alike;
  * ``geometry``         - the model input it asks a model family for;
  * ``resize_kernel``    - how a patch kernel moves to another shape between phases;
  * ``keep_index``       - for a method that drops tokens (``Capability.TOKEN_DROP``): which tokens of
    the model's grid each clip of a training batch keeps, drawn on the device (``kept_tokens``: how many).
A new method is one file in this package (or anywhere) defining a ``Method`` subclass with
``@register_method``; nothing else tests a method's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..errors import ScheduleError
from ..geometry import Capability, Geometry
from ..registry import Registry
from ._patch import pi_resize

METHODS: Registry[Method] = Registry(
    "method",
    __package__,
    lambda name, names: ScheduleError(
        f"unknown method {name!r}; choose one of {', '.join(names)} (e.g. fshift:4x5,1x15)"
    ),
)


class Method(ABC):
    """The contract. Every default is the baseline's (no compression)."""

    name: ClassVar[str]
    compresses: ClassVar[bool] = True  # False only for the baseline, which trains at C = 1 only
    needs: ClassVar[frozenset[Capability]] = frozenset()
    summary: ClassVar[str] = ""

    def frame_shift(self, base_shift_ms: float, C: int) -> float:
        return base_shift_ms

    def feature_length(self, target_length: int, C: int) -> int:
        return target_length

    def transform(self, x, n_frames, C: int):
        """(B, F, T) raw fbank batch and real frame counts -> the model's input."""
        return x

    def time_mask_scale(self, C: int) -> int:
        return 1

    @abstractmethod
    def geometry(self, C: int, full: Geometry) -> Geometry:
        """The model input this method trains at C, for full-resolution input `full`."""

    def resize_kernel(self, w, size):
        """A (D, C_in, p, q) patch kernel moved to `size`; PI-resize keeps the tokens it produces."""
        return pi_resize(w, size)

    @property
    def drops_tokens(self) -> bool:
        """Whether this method trains on a subset of the model's tokens (its geometry never changes)."""
        return Capability.TOKEN_DROP in self.needs

    def drops_at(self, C: int) -> bool:
        """Whether a training step at C sees only some tokens (C = 1 trains on all of them, by every method)."""
        return self.drops_tokens and C > 1

    def kept_tokens(self, C: int, grid: tuple[int, int]) -> int:
        """Tokens of a (freq, time) grid a training step sees at C: every one, unless the method drops some."""
        return grid[0] * grid[1]

    def keep_index(self, C: int, grid: tuple[int, int], batch: int, device):
        """(batch, kept_tokens) indices of the tokens each clip keeps in a training step, drawn on `device` from
        the generator the run installed; None keeps every token (and evaluation always does)."""
        return None

    def __repr__(self) -> str:
        return f"<method {self.name}>"


def register_method(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name, cls())  # instantiating enforces the abstract contract here
    return cls


def list_methods(compressing_only: bool = False) -> list[str]:
    return [n for n, m in METHODS.items() if m.compresses or not compressing_only]


def baseline_method() -> str:
    """The name of the method that does not compress: the baseline's."""
    return next(n for n, m in METHODS.items() if not m.compresses)


def get_method(name: str) -> Method:
    return METHODS.get(name)


def compress(method: str, C: int, x, n_frames):
    """Apply `method`'s batch transform at factor C to a raw (B, F, T) fbank batch."""
    return get_method(method).transform(x, n_frames, C)
