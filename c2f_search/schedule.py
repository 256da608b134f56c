"""Coarse-to-fine schedules: a compression method plus phases of (C, epochs).

Text form: ``METHOD:C1xE1,C2xE2,...,1xEn``, e.g. ``fshift:4x5,1x15``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

METHODS = ("none", "fshift", "avgpool", "maxpool", "patch-bl", "patch-pi")
EXAMPLE = "fshift:4x5,1x15"


class ScheduleError(ValueError):
    """A schedule spec that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Phase:
    C: int
    epochs: float

    def __str__(self) -> str:
        return f"{self.C}x{_fmt_epochs(self.epochs)}"


def _fmt_epochs(e: float) -> str:
    return str(int(e)) if float(e).is_integer() else repr(float(e))


@dataclass(frozen=True)
class Schedule:
    method: str
    phases: tuple[Phase, ...]

    def __post_init__(self):
        object.__setattr__(self, "phases", tuple(self.phases))
        _validate(self.method, self.phases)

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        return parse_schedule(text)

    def __str__(self) -> str:
        return f"{self.method}:" + ",".join(str(p) for p in self.phases)

    @property
    def total_epochs(self) -> float:
        return sum(p.epochs for p in self.phases)

    @property
    def max_C(self) -> int:
        return self.phases[0].C

    def phase_steps(self, steps_per_epoch: int) -> list[int]:
        """Optimizer steps per phase; fractional epochs round to whole steps (at least 1)."""
        bounds = [0]
        acc = 0.0
        for p in self.phases:
            acc += p.epochs
            bounds.append(max(bounds[-1] + 1, round(acc * steps_per_epoch)))
        return [b - a for a, b in zip(bounds, bounds[1:])]

    def check_grid(self, time_tokens: int) -> None:
        """Every C must divide the number of time tokens at full resolution."""
        for p in self.phases:
            if time_tokens % p.C:
                ok = [c for c in (8, 4, 2) if time_tokens % c == 0]
                raise ScheduleError(
                    f"schedule {self}: C={p.C} does not divide the {time_tokens} time tokens "
                    f"of the full-resolution input; use C in {ok or [1]} or change --target-length"
                )


def _validate(method: str, phases: Sequence[Phase]) -> None:
    if method not in METHODS:
        raise ScheduleError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} (e.g. {EXAMPLE})")
    if not phases:
        raise ScheduleError(f"schedule has no phases; write e.g. {EXAMPLE}")
    for p in phases:
        if not isinstance(p.C, int) or isinstance(p.C, bool) or p.C < 1:
            raise ScheduleError(f"C must be a positive integer, got {p.C!r} (e.g. {EXAMPLE})")
        if not (isinstance(p.epochs, (int, float)) and math.isfinite(p.epochs) and p.epochs > 0):
            raise ScheduleError(f"phase epochs must be > 0, got {p.epochs!r} (e.g. {EXAMPLE})")
    cs = [p.C for p in phases]
    if any(a <= b for a, b in zip(cs, cs[1:])):
        raise ScheduleError(f"C must strictly decrease across phases, got {'->'.join(map(str, cs))} (e.g. {EXAMPLE})")
    if cs[-1] != 1:
        raise ScheduleError(f"the last phase must have C=1 (full resolution), got C={cs[-1]} (e.g. {EXAMPLE})")
    if method == "none" and len(cs) > 1:
        raise ScheduleError("method 'none' is the baseline and takes one phase, e.g. none:1x20")


_PHASE = re.compile(r"^\s*([-+]?\d+)\s*x\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*$")


def parse_schedule(text: str) -> Schedule:
    """Parse ``METHOD:CxE,...``; raises ScheduleError with a valid example on bad input."""
    if not isinstance(text, str) or ":" not in text:
        raise ScheduleError(f"schedule {text!r} needs the form METHOD:CxEPOCHS,..., e.g. {EXAMPLE}")
    method, _, body = text.partition(":")
    method = method.strip()
    phases = []
    for part in body.split(","):
        m = _PHASE.match(part)
        if not m:
            if "x" not in part:
                raise ScheduleError(f"phase {part.strip()!r} in {text!r} is missing the 'x' in CxEPOCHS (e.g. {EXAMPLE})")
            raise ScheduleError(f"phase {part.strip()!r} in {text!r} is not CxEPOCHS with integer C (e.g. {EXAMPLE})")
        phases.append(Phase(int(m.group(1)), float(m.group(2))))
    return Schedule(method, tuple(phases))
