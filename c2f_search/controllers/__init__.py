"""Phase controllers: who decides when the next phase starts and at which C.

* ``FixedSchedule`` (``fixed.py``) - the paper's: lengths fixed up front; ``fork_point`` says which
  schedules can share which prefix;
* ``Plateau`` (``plateau.py``)   - an auto phase ends when the validation metric stops improving;
* ``Probe`` (``probe.py``)       - short forked probes at each decision point pick the C to go on with;
* ``Population`` (``population.py``) - the C comes from outside (a Ray PBT member's config).

``make_controller(schedule, transition, eval_every)`` builds the one a run's settings ask for. A
controller that ``--transition`` can name subclasses ``PhaseController`` (``base.py``), declares its
``options`` and registers itself with ``@register_controller("name")``, in this package or anywhere.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..schedule import Schedule
from .adaptive import AdaptiveSchedule
from .base import CONTROLLERS, Adopt, Done, PhaseController, Train, Transition, parse_spec, register_controller
from .fixed import FixedSchedule, fork_point
from .plateau import Plateau
from .population import Population
from .probe import Probe, ProbeArm

__all__ = [
    "PhaseController",
    "FixedSchedule",
    "AdaptiveSchedule",
    "Plateau",
    "Probe",
    "ProbeArm",
    "Population",
    "Train",
    "Transition",
    "Adopt",
    "Done",
    "parse_spec",
    "fork_point",
    "make_controller",
    "check_transition",
    "register_controller",
    "CONTROLLERS",
    "scale_transition",
]


def make_controller(schedule: Schedule, transition: str | None = None, eval_every=None) -> PhaseController:
    if transition is None:
        if schedule.is_adaptive:
            raise ConfigError(
                "transition",
                f"{schedule} leaves phase lengths open; say how they end, e.g. "
                f"--transition plateau:patience=2,delta=0.002",
            )
        return FixedSchedule(schedule, eval_every)
    name, kw = check_transition(transition)
    if not schedule.is_adaptive:
        raise ConfigError(
            "transition",
            f"{transition!r} decides phase lengths, but {schedule} fixes all of them; "
            f"write the coarse phases as CxAUTO, e.g. fshift:4xauto,2xauto,1x12",
        )
    if "max" in kw:
        kw["max_epochs"] = kw.pop("max")
    return CONTROLLERS.get(name)(schedule, transition, eval_every=eval_every, **kw)


def check_transition(transition: str) -> tuple[str, dict]:
    name = str(transition).partition(":")[0].strip()
    return parse_spec(transition, CONTROLLERS.get(name).options)


SCALED_OPTIONS = ("budget", "max")  # settings in epochs: they scale with the epoch budget


def scale_transition(transition: str, factor: float) -> str:
    """A --transition rule for `factor` times the epochs: its budget and max (epochs) scale, the rest (patience
    and steps count evaluations and probe steps) stays."""
    name, kw = check_transition(transition)
    return f"{name}:" + ",".join(
        f"{k}={v * factor:.6g}" if k in SCALED_OPTIONS else f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in kw.items()
    )
