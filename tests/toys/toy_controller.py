"""A phase controller defined outside the package: every auto phase trains exactly `steps` steps
(``--transition toy-count:steps=N``), evaluating at its end."""

from c2f_search.controllers import Done, Train, Transition, register_controller
from c2f_search.controllers.adaptive import AdaptiveSchedule


@register_controller("toy-count")
class Countdown(AdaptiveSchedule):
    options = {"steps": int}

    def __init__(self, schedule, spec, steps: int = 3, **kw):
        super().__init__(schedule, spec, **kw)
        self.steps = steps

    def next_action(self, progress):
        i = self._plan_index(progress.C)
        length = self.fixed_steps[i] or self.steps
        done = progress.phases[-1]["steps"]
        if done >= length:
            nxt = self._next_C(i)
            return Done("counted out") if nxt is None else Transition(nxt, f"counted {length} steps")
        return Train(progress.step - done + length)
