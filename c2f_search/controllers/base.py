"""Phase controllers: they decide when the next phase starts and at which C. ``Run`` trains; a
controller sees a read-only view of the run's progress (``train.Progress``: ``step``, ``C``,
``phases`` (C, steps, planned length, why), ``history``, ``counters``, ``step_flops(C)``) and answers
``next_action`` with an action: train on to a step, move to another C, continue from a fork of the
run, or stop. It never drives the run itself (Ray Tune's schedulers decide the same way). To look
ahead it may train a fork of the current state with ``progress.fork(controller)``: the fork is a run
of its own, and only an ``Adopt`` action makes its steps the run's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import parse_eval_every
from ..errors import ConfigError
from ..registry import Registry
from ..schedule import Schedule

CONTROLLERS: Registry[type[PhaseController]] = Registry(
    "controller",
    __package__,
    lambda name, names: ConfigError(
        "transition", f"{name!r}: choose {' or '.join(names)}, e.g. plateau:patience=2,delta=0.002 or probe:steps=10"
    ),
)


def register_controller(name: str):
    """Make a controller class selectable as ``--transition NAME:key=value,...``."""

    def deco(cls: type[PhaseController]) -> type[PhaseController]:
        cls.name = name
        return CONTROLLERS.register(name, cls)

    return deco


@dataclass(frozen=True)
class Train:
    stop: int  # train until this absolute step, then evaluate


@dataclass(frozen=True)
class Transition:
    C: int
    reason: str


@dataclass(frozen=True)
class Adopt:
    """Continue from a fork (``progress.fork``): its steps become the run's own; the FLOPs of work thrown
    away (e.g. losing probes) are added to the run's cost, and the fork's new phases take `reason`."""

    fork: Any
    extra_train_flops: float = 0.0
    extra_eval_flops: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Done:
    reason: str


class PhaseController(ABC):
    """The contract; see the module docstring. ``options`` are the ``--transition NAME:key=value``
    settings a registered controller takes, each with its type."""

    name: ClassVar[str] = "controller"
    options: ClassVar[dict[str, type]] = {}

    def bind(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    @abstractmethod
    def first_C(self) -> int: ...

    @abstractmethod
    def final_C(self) -> int: ...

    @abstractmethod
    def candidate_Cs(self) -> list[int]:
        """Every C the run may train at (features are prepared up front)."""

    @abstractmethod
    def describe(self) -> str:
        """The schedule text written in records."""

    @abstractmethod
    def next_action(self, progress) -> Train | Transition | Adopt | Done: ...

    def planned_steps(self, phase_index: int) -> int | None:
        """The phase's length if known when it starts (a cosine LR needs it); None if decided on the way."""
        return None

    def observe(self, progress, record: dict) -> None:
        """Called after each evaluation, before ``next_action``."""

    def accepts(self, phases: list[dict], step: int, lr_needs_length: bool) -> str | None:
        """None if a trained history can continue under this controller, else why not."""
        return None

    def labels(self, record: dict) -> dict | None:
        """How this controller labels a record of a history it continues (a fork's); None keeps them."""
        return None

    def total_steps(self) -> int | None:
        return None

    def eval_points(self) -> set[int] | None:
        """Every step at which this controller evaluates, where that is known up front."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, s: dict) -> None:
        pass


class ScheduleController(PhaseController):
    """A controller driven by a schedule's C sequence (fixed or adaptive lengths)."""

    schedule: Schedule
    eval_every = None  # --eval-every: steps or fractions of an epoch, besides every epoch

    def first_C(self):
        return self.schedule.phases[0].C

    def final_C(self):
        return self.schedule.phases[-1].C

    def candidate_Cs(self):
        return self.schedule.Cs

    def bind(self, steps_per_epoch):
        super().bind(steps_per_epoch)
        self.every = parse_eval_every(self.eval_every, steps_per_epoch) if self.eval_every else steps_per_epoch

    def _next_eval(self, progress) -> int:
        return next_eval(progress.step, self.steps_per_epoch, self.every)


def next_eval(step: int, steps_per_epoch: int, every: int) -> int:
    """The next evaluation after `step`: an epoch boundary or a multiple of --eval-every, whichever comes first."""
    return min((step // steps_per_epoch + 1) * steps_per_epoch, (step // every + 1) * every)


def parse_spec(text: str, allowed: dict) -> tuple[str, dict]:
    """``NAME[:key=value,...]`` with each value converted by ``allowed[key]``."""
    name, _, body = str(text).partition(":")
    out = {}
    for kv in filter(None, (p.strip() for p in body.split(","))):
        k, eq, v = kv.partition("=")
        if not eq or k not in allowed:
            raise ConfigError("transition", f"{text!r}: {kv!r} is not one of {', '.join(f'{a}=...' for a in allowed)}")
        if k in out:
            raise ConfigError("transition", f"{text!r}: {k} is given twice; give it once")
        try:
            out[k] = allowed[k](v)
        except ValueError:
            raise ConfigError("transition", f"{text!r}: {k}={v!r} is not a valid value") from None
        if isinstance(out[k], float) and not math.isfinite(out[k]):
            raise ConfigError("transition", f"{text!r}: {k}={v} is not a finite number")
    return name.strip(), out
