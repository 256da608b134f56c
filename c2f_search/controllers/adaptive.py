"""Adaptive schedules (``fshift:4xauto,2xauto,1x12``): coarse phases whose length a rule decides during
training. ``AdaptiveSchedule`` holds what every such controller shares: fixed phases keep their length,
an auto phase always ends at its maximum length, and a total FLOPs budget always leaves the fixed
phases after it (the final C = 1 phase above all) their planned share. Subclasses add the rule
(``end_reason``) or take the decision themselves (``next_action``)."""

from __future__ import annotations

from ..errors import ConfigError
from ..schedule import Schedule
from .base import Done, ScheduleController, Train, Transition


class AdaptiveSchedule(ScheduleController):
    options = {"max": float, "budget": float}

    def __init__(
        self,
        schedule: Schedule,
        spec: str,
        max_epochs: float | None = None,
        budget: float | None = None,
        eval_every=None,
    ):
        if max_epochs is not None and not max_epochs > 0:
            raise ConfigError("transition", f"{spec!r}: max must be > 0 epochs")
        if budget is not None and not budget > 0:
            raise ConfigError("transition", f"{spec!r}: budget must be > 0 full-resolution epochs")
        final = schedule.phases[-1]
        if budget is not None and final.C == 1 and final.epochs is not None and budget <= final.epochs:
            raise ConfigError(
                "transition",
                f"{spec!r}: budget={budget:g} full-resolution epochs leaves nothing for the coarse phases once the "
                f"final phase's {final.epochs:g} epochs are paid; give a budget above {final.epochs:g}",
            )
        self.schedule, self.spec, self.eval_every = schedule, spec, eval_every
        # an auto phase is capped at the final phase's length unless max says otherwise
        self.max_epochs = max_epochs if max_epochs is not None else schedule.phases[-1].epochs
        self.budget = budget

    def bind(self, steps_per_epoch):
        super().bind(steps_per_epoch)
        spe = steps_per_epoch
        self.max_steps = max(1, round(self.max_epochs * spe))
        self.fixed_steps = [None if p.epochs is None else max(1, round(p.epochs * spe)) for p in self.schedule.phases]

    def describe(self):
        return f"{self.schedule} [{self.spec}]"

    def planned_steps(self, phase_index):
        return None  # an auto phase's length is decided on the way; run.phases names the fixed ones

    def _plan_index(self, C: int) -> int:
        return self.schedule.Cs.index(C)

    def _next_C(self, i: int) -> int | None:
        return self.schedule.Cs[i + 1] if i + 1 < len(self.schedule.Cs) else None

    def _budget_left(self, progress, i: int) -> bool:
        """Whether one more evaluation interval at this C still leaves the fixed phases after it their share."""
        if self.budget is None:
            return True
        flops = progress.step_flops
        total = self.budget * self.steps_per_epoch * flops(1)
        after = sum(
            self.fixed_steps[j] * flops(C)
            for j, C in enumerate(self.schedule.Cs)
            if j > i and self.fixed_steps[j] is not None
        )
        return progress.counters["train_flops"] + self.every * flops(progress.C) + after <= total

    def end_reason(self, progress) -> str | None:
        """Why the current auto phase ends now (None: it goes on)."""
        i, steps = self._plan_index(progress.C), progress.phases[-1]["steps"]
        if steps >= self.max_steps:
            return f"max phase length ({self.max_steps} steps)"
        if not self._budget_left(progress, i):
            return f"budget: the remaining phases need the rest of {self.budget:g} full-resolution epochs"
        return None

    def next_action(self, progress):
        i, steps = self._plan_index(progress.C), progress.phases[-1]["steps"]
        fixed = self.fixed_steps[i]
        reason = (
            (f"planned: {fixed} steps" if steps >= fixed else None) if fixed is not None else self.end_reason(progress)
        )
        if reason is not None:
            nxt = self._next_C(i)
            return Done(reason) if nxt is None else Transition(nxt, reason)
        start = progress.step - steps
        cap = start + (fixed if fixed is not None else self.max_steps)
        return Train(min(self._next_eval(progress), cap))

    def accepts(self, phases, step, lr_needs_length):
        Cs = self.schedule.Cs
        if lr_needs_length:
            return "lr_schedule cosine needs each phase's length up front; adaptive phases have none"
        seen = [p["C"] for p in phases]
        if any(C not in Cs for C in seen) or seen != sorted(seen, reverse=True) or len(set(seen)) != len(seen):
            return f"it trained C={'->'.join(map(str, seen))}, not a path through {self.schedule}"
        for p in phases[:-1]:
            fixed = self.fixed_steps[Cs.index(p["C"])]
            if fixed is not None and p["steps"] != fixed:
                return f"its phase at C={p['C']} trained {p['steps']} steps, {self.schedule} fixes {fixed}"
        return None
