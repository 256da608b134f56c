"""Population controller: the C a run trains at comes from outside (a Ray PBT member's config, which
PBT may lower when the member copies a better one, never raise). The controller only keeps the
final phase's share of a total FLOPs budget: once the budget left is what the final phase needs, the
run moves to the final C and finishes there."""

from __future__ import annotations

from ..errors import ConfigError
from .adaptive import AdaptiveSchedule
from .base import Done, Train, Transition


class Population(AdaptiveSchedule):
    name = "population"

    def __init__(self, schedule, spec, C: int, budget: float, **kw):
        super().__init__(schedule, spec, budget=budget, **kw)
        if C not in schedule.Cs:
            raise ConfigError("C", f"{C} is not one of the schedule's C values {schedule.Cs}")
        self.C = C

    def first_C(self):
        return self.C

    def accepts(self, phases, step, lr_needs_length):
        return "lr_schedule cosine needs each phase's length up front" if lr_needs_length else None

    def next_action(self, progress):
        i = self._plan_index(progress.C)
        final = len(self.schedule.Cs) - 1
        if i < final:
            if self.C < progress.C:  # PBT lowered this member's C: move the weights to the finer grid
                return Transition(self.C, f"population: copied a better member, C lowered to {self.C}")
            if not self._budget_left(progress, i):
                return Transition(
                    self.schedule.Cs[-1],
                    f"budget: the final phase needs the rest of {self.budget:g} full-resolution epochs",
                )
            return Train(self._next_eval(progress))
        steps = progress.phases[-1]["steps"]
        if steps >= self.fixed_steps[final]:
            return Done(f"budget of {self.budget:g} full-resolution epochs spent")
        return Train(min(self._next_eval(progress), progress.step - steps + self.fixed_steps[final]))
