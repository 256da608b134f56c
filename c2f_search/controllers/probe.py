"""Probe controller (after AutoProg, CVPR 2022): at each decision point in an auto phase, fork short
probes from the current state, one that keeps C and one for each finer C of the schedule, train each
for ``steps`` steps, and continue from the probe whose validation loss fell most per FLOP (or per
second, ``score=time``). The winner's steps are the run's own; the losers' FLOPs are added to the
run's ``train_flops`` and ``controller_flops``, never hidden.

A probe is a ``Run`` forked from the current state (``Run.spawn``), so it is exactly the run that
would have happened had the controller chosen its C."""
from __future__ import annotations

from ..errors import ConfigError
from .adaptive import AdaptiveSchedule
from .base import Done, PhaseController, Train, Transition


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

    def next_action(self, run):
        if run.C != self.C:
            return Transition(self.C, f"probe: {self.steps} steps at C={self.C} scored best")
        if run.step >= self.start + self.steps:
            return Done("probe done")
        return Train(self.start + self.steps)


class Probe(AdaptiveSchedule):
    name = "probe"

    def __init__(self, schedule, spec, steps: int = 10, score: str = "flops", **kw):
        super().__init__(schedule, spec, **kw)
        if steps < 1 or score not in ("flops", "time"):
            raise ConfigError("transition", f"{spec!r}: steps must be >= 1 and score flops or time")
        self.probe_steps, self.score = steps, score
        self.state = {"decided_at": -1, "decisions": []}

    def choose(self, scores: dict[int, float]) -> int:
        """The C to continue at; a subclass may decide otherwise (tests force a winner)."""
        return max(scores, key=lambda C: (scores[C], C))  # ties keep the coarser (cheaper) C

    def next_action(self, run):
        act = super().next_action(run)
        i = self._plan_index(run.C)
        decide = (isinstance(act, Train) and self.fixed_steps[i] is None and run.history
                  and run.history[-1]["step"] == run.step and self.state["decided_at"] != run.step)
        if not decide:
            return act
        finer = [C for C in self.schedule.Cs[i + 1:]]
        base_loss, base_flops = run.history[-1]["val_loss"], run.counters["train_flops"]
        arms, scores = {}, {}
        for C in [run.C, *finer]:
            arm = run.spawn(ProbeArm(C, run.step, self.probe_steps, self.final_C()))
            rec = list(arm.records())[-1]
            cost = rec["train_flops"] - base_flops if self.score == "flops" else rec["train_time_s"] - run.counters["train_time_s"]
            arms[C], scores[C] = arm, (base_loss - rec["val_loss"]) / max(cost, 1e-12)
        win = self.choose(scores)
        losers = sum(a.counters["train_flops"] - base_flops for C, a in arms.items() if C != win)
        losers_eval = sum(a.counters["eval_flops"] - run.counters["eval_flops"] for C, a in arms.items() if C != win)
        self.state["decided_at"] = arms[win].step
        self.state["decisions"].append({"step": run.step, "scores": {str(k): v for k, v in scores.items()}, "C": win})
        run.adopt(arms[win], extra_flops=losers, extra_eval_flops=losers_eval,
                  reason=f"probe: C={win} cut the validation loss most per {'FLOP' if self.score == 'flops' else 'second'}")
        return self.next_action(run)

    def state_dict(self):
        return {"decided_at": self.state["decided_at"], "decisions": list(self.state["decisions"])}

    def load_state_dict(self, s):
        self.state = {"decided_at": s["decided_at"], "decisions": list(s["decisions"])}
