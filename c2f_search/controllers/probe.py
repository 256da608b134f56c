"""Probe controller (after AutoProg, CVPR 2022): at each decision point in an auto phase, fork short
probes from the current state, one that keeps C and one for each finer C of the schedule, train each
for ``steps`` steps, and continue from the probe whose validation loss fell most per FLOP (or per
second, ``score=time``). The winner's steps are the run's own; the losers' FLOPs are added to the
run's ``train_flops`` and ``controller_flops``, never hidden.

A probe is a fork of the current state (``progress.fork``), so it is exactly the run that would have
happened had the controller chosen its C; the controller then answers ``Adopt(winner)``."""

from __future__ import annotations

from ..errors import ConfigError
from .adaptive import AdaptiveSchedule
from .base import Adopt, Done, PhaseController, Train, Transition, register_controller


class ProbeArm(PhaseController):
    """Train `steps` steps at C (moving there first if needed), evaluate once, stop."""

    name = "probe-arm"

    def __init__(self, C: int, start: int, steps: int, final_C: int):
        self.C, self.start, self.steps, self._final = C, start, steps, final_C

    def first_C(self):
        return self.C

    def final_C(self):
        return self._final

    def candidate_Cs(self):
        return [self.C]

    def describe(self):
        return f"probe C={self.C}"

    def next_action(self, progress):
        if progress.C != self.C:
            return Transition(self.C, f"probe: {self.steps} steps at C={self.C} scored best")
        if progress.step >= self.start + self.steps:
            return Done("probe done")
        return Train(self.start + self.steps)


@register_controller("probe")
class Probe(AdaptiveSchedule):
    options = {"steps": int, "score": str, **AdaptiveSchedule.options}

    def __init__(self, schedule, spec, steps: int = 10, score: str = "flops", **kw):
        super().__init__(schedule, spec, **kw)
        if steps < 1 or score not in ("flops", "time"):
            raise ConfigError("transition", f"{spec!r}: steps must be >= 1 and score flops or time")
        self.probe_steps, self.score = steps, score
        self.state = {"decided_at": -1, "decisions": []}

    def choose(self, scores: dict[int, float]) -> int:
        """The C to continue at; a subclass may decide otherwise (tests force a winner)."""
        return max(scores, key=lambda C: (scores[C], C))  # ties keep the coarser (cheaper) C

    def next_action(self, progress):
        act = super().next_action(progress)
        i = self._plan_index(progress.C)
        history, counters = progress.history, progress.counters
        decide = (
            isinstance(act, Train)
            and self.fixed_steps[i] is None
            and history
            and history[-1]["step"] == progress.step
            and self.state["decided_at"] != progress.step
        )
        if not decide:
            return act
        base_loss, base_flops = history[-1]["val_loss"], counters["train_flops"]
        forks, scores = {}, {}
        for C in [progress.C, *self.schedule.Cs[i + 1 :]]:
            fork = progress.fork(ProbeArm(C, progress.step, self.probe_steps, self.final_C()))
            rec = fork.history[-1]
            cost = (
                rec["train_flops"] - base_flops
                if self.score == "flops"
                else rec["train_time_s"] - counters["train_time_s"]
            )
            forks[C], scores[C] = fork, (base_loss - rec["val_loss"]) / max(cost, 1e-12)
        win = self.choose(scores)
        lost = [f.counters for C, f in forks.items() if C != win]
        self.state["decided_at"] = forks[win].step
        self.state["decisions"].append(
            {"step": progress.step, "scores": {str(k): v for k, v in scores.items()}, "C": win}
        )
        return Adopt(
            forks[win],
            sum(c["train_flops"] - base_flops for c in lost),
            sum(c["eval_flops"] - counters["eval_flops"] for c in lost),
            f"probe: C={win} cut the validation loss most per {'FLOP' if self.score == 'flops' else 'second'}",
        )

    def state_dict(self):
        return {"decided_at": self.state["decided_at"], "decisions": list(self.state["decisions"])}

    def load_state_dict(self, s):
        self.state = {"decided_at": s["decided_at"], "decisions": list(s["decisions"])}
