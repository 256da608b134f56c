"""Temporal compression methods: one module per method, each a small class behind one contract,
registered by name (Composer-style: a pure function at each method's core).

A method says, for a compression factor C:
  * ``frame_shift``      - the fbank frame shift its features are read at;
  * ``feature_length``   - how many frames those features are cut or padded to;
  * ``transform``        - what it does to a batch of those features (on the device);
  * ``time_mask_scale``  - how much shorter the time axis is, so SpecAugment's time mask shrinks alike;
  * ``geometry``         - the model input it asks a model family for.
A new method is one file in this package defining a ``Method`` subclass with ``@register_method``;
nothing else tests a method's name.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import ClassVar

from ..errors import ScheduleError
from ..geometry import Geometry

__all__ = ["Method", "register_method", "get_method", "list_methods", "baseline_method", "compress"]

_METHODS: dict[str, "Method"] = {}


class Method:
    """The contract. The defaults are those of the baseline (no compression)."""
    name: ClassVar[str]
    compresses: ClassVar[bool] = True  # False only for the baseline, which trains at C = 1 only
    kernel_resize: ClassVar[str | None] = None  # how a stretched patch kernel moves between phases
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

    def geometry(self, C: int, full: Geometry) -> Geometry:
        return full

    def __repr__(self) -> str:
        return f"<method {self.name}>"


def register_method(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls()
    return cls


_discovered = False


def _discover() -> None:
    """Import every module of the package once, so each registers itself (a new one is one file)."""
    global _discovered
    if not _discovered:
        _discovered = True
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")


def list_methods(compressing_only: bool = False) -> list[str]:
    _discover()
    return [n for n, m in sorted(_METHODS.items()) if m.compresses or not compressing_only]


def baseline_method() -> str:
    """The name of the method that does not compress: the baseline's."""
    _discover()
    return next(n for n, m in _METHODS.items() if not m.compresses)


def get_method(name: str) -> Method:
    _discover()
    if name not in _METHODS:
        raise ScheduleError(f"unknown method {name!r}; choose one of {', '.join(list_methods())} "
                            f"(e.g. fshift:4x5,1x15)")
    return _METHODS[name]


def compress(method: str, C: int, x, n_frames):
    """Apply `method`'s batch transform at factor C to a raw (B, F, T) fbank batch."""
    return get_method(method).transform(x, n_frames, C)
