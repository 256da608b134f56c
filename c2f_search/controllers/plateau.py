"""Plateau controller: an auto phase ends when the validation metric at its C has not improved by more
than ``delta`` for ``patience`` evaluations (``--transition plateau:patience=2,delta=0.002``)."""

from __future__ import annotations

from ..errors import ConfigError
from .adaptive import AdaptiveSchedule
from .base import register_controller


@register_controller("plateau")
class Plateau(AdaptiveSchedule):
    options = {"patience": int, "delta": float, **AdaptiveSchedule.options}

    def __init__(self, schedule, spec, patience: int = 2, delta: float = 0.0, **kw):
        super().__init__(schedule, spec, **kw)
        if patience < 1 or delta < 0:
            raise ConfigError("transition", f"{spec!r}: patience must be >= 1 and delta >= 0")
        self.patience, self.delta = patience, delta
        self.state = {"C": None, "best": None, "since": 0}

    def observe(self, progress, record):
        s = self.state
        if s["C"] != progress.C:  # a new phase starts its own plateau watch
            s.update(C=progress.C, best=None, since=0)
        if s["best"] is None or record["val_metric"] > s["best"] + self.delta:
            s.update(best=record["val_metric"], since=0)
        else:
            s["since"] += 1

    def end_reason(self, progress):
        s = self.state
        if s["C"] == progress.C and s["since"] >= self.patience:
            return (
                f"plateau: {self.patience} evaluations without an improvement over {s['best']:.4f} "
                f"by more than {self.delta:g}"
            )
        return super().end_reason(progress)

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, s):
        self.state = dict(s)
