"""Phase controllers: they decide when the next phase starts and at which C. ``Run`` trains; a
controller only looks at what has been trained (``run.phases``: C, steps, planned length, why) and
answers ``next_action``: train on to a step, move to another C, or stop.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..schedule import Schedule


@dataclass(frozen=True)
class Train:
    stop: int  # train until this absolute step, then evaluate


@dataclass(frozen=True)
class Transition:
    C: int
    reason: str


@dataclass(frozen=True)
class Done:
    reason: str


class PhaseController:
    """The contract; see the module docstring."""
    name = "controller"

    def bind(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def first_C(self) -> int: ...
    def final_C(self) -> int: ...
    def candidate_Cs(self) -> list[int]: ...  # every C the run may train at (features are prepared up front)
    def describe(self) -> str: ...  # the schedule text written in records
    def next_action(self, run) -> Train | Transition | Done: ...

    def planned_steps(self, phase_index: int) -> int | None:
        """The phase's length if known when it starts (a cosine LR needs it); None if decided on the way."""
        return None

    def observe(self, run, record: dict) -> None:
        """Called after each evaluation, before ``next_action``."""

    def accepts(self, phases: list[dict], step: int, lr_needs_length: bool) -> str | None:
        """None if a trained history can continue under this controller, else why not."""
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

    def _next_eval(self, run) -> int:
        return next_eval(run.step, self.steps_per_epoch, self.every)


def next_eval(step: int, steps_per_epoch: int, every: int) -> int:
    """The next evaluation after `step`: an epoch boundary or a multiple of --eval-every, whichever comes first."""
    return min((step // steps_per_epoch + 1) * steps_per_epoch, (step // every + 1) * every)


def parse_eval_every(text, steps_per_epoch: int) -> int:
    """``--eval-every``: ``N`` steps, ``Nstep(s)`` or ``Xepoch(s)`` (fractions of an epoch allowed)."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(steps?|epochs?)?\s*", str(text))
    if not m or (m.group(2) or "step").startswith("step") and "." in m.group(1):
        raise ConfigError("eval_every", f"{text!r}: write N steps (e.g. 50) or a fraction of an epoch (e.g. 0.25epoch)")
    n = float(m.group(1)) * (steps_per_epoch if (m.group(2) or "").startswith("epoch") else 1)
    if round(n) < 1:
        raise ConfigError("eval_every", f"{text!r} is less than one step ({steps_per_epoch} steps per epoch)")
    return round(n)


def parse_spec(text: str, allowed: dict) -> tuple[str, dict]:
    """``NAME[:key=value,...]`` with each value converted by ``allowed[key]``."""
    name, _, body = str(text).partition(":")
    out = {}
    for kv in filter(None, (p.strip() for p in body.split(","))):
        k, eq, v = kv.partition("=")
        if not eq or k not in allowed:
            raise ConfigError("transition", f"{text!r}: {kv!r} is not one of {', '.join(f'{a}=...' for a in allowed)}")
        try:
            out[k] = allowed[k](v)
        except ValueError:
            raise ConfigError("transition", f"{text!r}: {k}={v!r} is not a valid value") from None
    return name.strip(), out
