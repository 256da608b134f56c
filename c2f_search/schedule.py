"""Coarse-to-fine schedules: phases of (C, epochs), each trained by a compression method.

Text form: ``METHOD:C1xE1,C2xE2,...,1xEn``, e.g. ``fshift:4x5,1x15``. C strictly decreases and the
last phase runs at full resolution (C = 1). A method prefix may start any coarse phase and holds for
the phases after it until the next one: ``avgpool:4x2,tpatchout:2x2,1x6`` pools by 4 for 2 epochs, then
keeps half the time columns for 2, then trains at full resolution (C = 1 is the same for every method,
so the final phase takes no prefix of its own). An adaptive schedule leaves coarse phase lengths to a
phase controller: ``fshift:4xauto,2xauto,1x12`` (the last phase always has a length). Table 1's ablation that
never returns to full
resolution ("Pool2") has its own spelling, ``METHOD:CxE,coarse-only`` (e.g. ``avgpool:2x20,coarse-only``),
so that a forgotten ``1xE`` is still an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from .errors import ScheduleError

EXAMPLE = "fshift:4x5,1x15"
COARSE_ONLY = "coarse-only"

__all__ = ["Phase", "Schedule", "ScheduleError", "parse_schedule", "record_schedule", "EXAMPLE", "COARSE_ONLY", "AUTO"]


AUTO = "auto"


@dataclass(frozen=True)
class Phase:
    C: int
    epochs: float | None  # None: decided during training by a controller (written "auto")
    method: str | None = None  # None: the method of the phase before (a Schedule fills it in)

    def __str__(self) -> str:
        return f"{self.C}x{_fmt_epochs(self.epochs)}"


def _fmt_epochs(e: float | None) -> str:
    if e is None:
        return AUTO
    return str(int(e)) if float(e).is_integer() else repr(float(e))


@dataclass(frozen=True)
class Schedule:
    method: str  # the first phase's method
    phases: tuple[Phase, ...]  # each with its method filled in
    coarse_only: bool = False  # Table 1's "Pool2" ablation: no full-resolution phase

    def __post_init__(self):
        phases, method = [], self.method
        for p in self.phases:
            method = p.method or method
            phases.append(p if p.method == method else replace(p, method=method))
        object.__setattr__(self, "phases", tuple(phases))
        _validate(self)

    @classmethod
    def parse(cls, text: str) -> Schedule:
        return parse_schedule(text)

    def __str__(self) -> str:
        """A method prefix only where the method changes."""
        parts = [
            f"{p.method}:{p}" if k == 0 or p.method != self.phases[k - 1].method else str(p)
            for k, p in enumerate(self.phases)
        ]
        return ",".join(parts) + (f",{COARSE_ONLY}" if self.coarse_only else "")

    @property
    def methods(self) -> list[str]:
        """The methods of the phases, each once, in order."""
        return list(dict.fromkeys(p.method for p in self.phases))

    @property
    def label(self) -> str:
        """The records' ``method``: the method, or a mixed schedule's methods joined by '+'."""
        return "+".join(self.methods)

    def method_at(self, C: int) -> str:
        """The method of the phase at C (C strictly decreases, so a C names one phase)."""
        for p in self.phases:
            if p.C == C:
                return p.method
        raise ScheduleError(f"{self} has no phase at C={C}; its C values are {self.Cs}")

    @property
    def grid_Cs(self) -> list[int]:
        """The C of every phase whose method changes the token grid (a token-dropping one keeps it, and its C
        need not divide anything)."""
        from .compress import get_method

        return [p.C for p in self.phases if not get_method(p.method).drops_tokens]

    @property
    def is_adaptive(self) -> bool:
        return any(p.epochs is None for p in self.phases)

    @property
    def total_epochs(self) -> float:
        if self.is_adaptive:
            raise ScheduleError(f"{self} leaves phase lengths to a controller; it has no fixed number of epochs")
        return sum(p.epochs for p in self.phases)

    @property
    def max_C(self) -> int:
        return self.phases[0].C

    @property
    def Cs(self) -> list[int]:
        return [p.C for p in self.phases]

    @property
    def is_baseline(self) -> bool:
        """One phase at full resolution: the reference every saving is measured against."""
        return self.Cs == [1]

    def scaled(self, factor: float) -> Schedule:
        """The same shape over `factor` times the epochs: every fixed phase's length times `factor` (six
        significant digits, so a short phase never rounds to nothing); auto phases stay auto."""
        return Schedule(
            self.method,
            tuple(
                replace(p, epochs=None if p.epochs is None else float(f"{p.epochs * factor:.6g}")) for p in self.phases
            ),
            self.coarse_only,
        )

    def phase_steps(self, steps_per_epoch: int) -> list[int]:
        """Optimizer steps per phase; fractional epochs round to whole steps (at least 1).

        Bounds are rounded on the cumulative epochs, so a phase's step count depends only on
        the phases before it and itself: schedules that agree on a prefix agree on its steps.
        """
        if self.is_adaptive:
            raise ScheduleError(f"{self} leaves phase lengths to a controller; give --transition")
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


def _validate(s: Schedule) -> None:
    from .compress import get_method

    method = get_method(s.method)  # raises ScheduleError naming the registered methods
    if not s.phases:
        raise ScheduleError(f"schedule has no phases; write e.g. {EXAMPLE}")
    for k, p in enumerate(s.phases):
        if not isinstance(p.C, int) or isinstance(p.C, bool) or p.C < 1:
            raise ScheduleError(f"phase {k + 1}: C must be a positive integer, got {p.C!r} (e.g. {EXAMPLE})")
        if p.epochs is not None and not (
            isinstance(p.epochs, (int, float))
            and not isinstance(p.epochs, bool)
            and math.isfinite(p.epochs)
            and p.epochs > 0
        ):
            raise ScheduleError(f"phase {k + 1}: epochs must be a finite number > 0, got {p.epochs!r} (e.g. {EXAMPLE})")
        if k and p.method != s.phases[k - 1].method:
            _check_switch(s, k)
    cs = s.Cs
    if s.phases[-1].epochs is None:
        raise ScheduleError(
            f"the last phase needs a length, e.g. fshift:4xauto,2xauto,1x12; only coarse phases may be '{AUTO}'"
        )
    if any(a <= b for a, b in zip(cs, cs[1:])):
        raise ScheduleError(f"C must strictly decrease across phases, got {'->'.join(map(str, cs))} (e.g. {EXAMPLE})")
    if not method.compresses and cs != [1]:
        raise ScheduleError(f"method {s.method!r} is the baseline and takes one phase at C=1, e.g. none:1x20")
    if s.coarse_only:
        if cs[-1] == 1:
            raise ScheduleError(
                f"{s}: '{COARSE_ONLY}' is for schedules that never reach C=1; drop it, or drop "
                f"the 1xE phase (e.g. avgpool:2x20,{COARSE_ONLY})"
            )
    elif cs[-1] != 1:
        raise ScheduleError(
            f"the last phase must have C=1 (full resolution), got C={cs[-1]} (e.g. {EXAMPLE}); "
            f"for Table 1's coarse-only ablation write {s.phases[-1].method}:{cs[-1]}xE,{COARSE_ONLY}"
        )


def _check_switch(s: Schedule, k: int) -> None:
    """Phase k (0-based) names a method other than the phase before it."""
    from .compress import get_method

    p = s.phases[k]
    where = f"phase {k + 1} ('{p.method}:{p}')"
    try:
        method = get_method(p.method)
    except ScheduleError as e:
        raise ScheduleError(f"{where}: {e}") from None
    if not method.compresses:
        raise ScheduleError(
            f"{where}: {p.method!r} is the baseline, a schedule of its own (e.g. none:1x20); "
            f"a later phase names a compression method (e.g. avgpool:4x2,tpatchout:2x2,1x6)"
        )
    if p.C == 1:
        raise ScheduleError(
            f"{where}: C=1 is full resolution for every method, so the final phase takes no method "
            f"of its own; write {p} (e.g. avgpool:4x2,tpatchout:2x2,1x6)"
        )


_PHASE = re.compile(r"^\s*([-+]?\d+)\s*x\s*(.+?)\s*$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def record_schedule(text: str) -> Schedule:
    """The schedule of a record's ``schedule`` field (an adaptive one carries its rule: ``... [plateau:...]``)."""
    return parse_schedule(text.split(" [", 1)[0])


def parse_schedule(text: str) -> Schedule:
    """Parse ``METHOD:CxE,[METHOD:]CxE,...[,coarse-only]``; raises ScheduleError with a valid example on bad input."""
    if not isinstance(text, str) or ":" not in text:
        raise ScheduleError(f"schedule {text!r} needs the form METHOD:CxEPOCHS,..., e.g. {EXAMPLE}")
    parts = [p.strip() for p in text.split(",")]
    coarse_only = len(parts) > 1 and parts[-1] == COARSE_ONLY
    if coarse_only:
        parts = parts[:-1]
    phases = []
    for k, part in enumerate(parts):
        method, colon, body = part.rpartition(":")
        method = method.strip() or None
        if k == 0 and not colon:
            raise ScheduleError(f"schedule {text!r} needs the form METHOD:CxEPOCHS,..., e.g. {EXAMPLE}")
        if colon and method is None:
            raise ScheduleError(f"phase {k + 1} ({part!r}) in {text!r} has an empty method before ':' (e.g. {EXAMPLE})")
        phases.append(_phase(body, text, method))
    return Schedule(phases[0].method, tuple(phases), coarse_only)


def _phase(part: str, text: str, method: str | None) -> Phase:
    m = _PHASE.match(part)
    if not m:
        if "x" not in part:
            raise ScheduleError(f"phase {part!r} in {text!r} is missing the 'x' in CxEPOCHS (e.g. {EXAMPLE})")
        raise ScheduleError(f"phase {part!r} in {text!r} is not CxEPOCHS with an integer C (e.g. {EXAMPLE})")
    if m.group(2) == AUTO:
        return Phase(int(m.group(1)), None, method)
    if not _NUMBER.match(m.group(2)):
        raise ScheduleError(
            f"phase {part!r} in {text!r}: epochs {m.group(2)!r} is not a number "
            f"(e.g. {EXAMPLE}; fractions like 0.5 are fine, or '{AUTO}' for a controller)"
        )
    return Phase(int(m.group(1)), float(m.group(2)), method)


def trained_schedule(phases: list[dict], steps_per_epoch: int) -> str:
    """Phases as trained ({C, method, steps}) written as a fixed schedule that re-runs them standalone. A C=1
    phase trains the same by every method, so it continues the method before it (a learned run may have
    skipped the coarse phase whose method the schedule gives its C=1 phase)."""
    done: list[Phase] = []
    for p in phases:
        if p["steps"]:
            method = p["method"] if p["C"] > 1 or not done else done[-1].method
            done.append(Phase(p["C"], p["steps"] / steps_per_epoch, method))
    return str(Schedule(done[0].method, tuple(done), coarse_only=done[-1].C != 1)) if done else ""
