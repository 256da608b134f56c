"""``FixedSchedule`` is the paper's controller: phase lengths fixed up front. It keeps no state of
its own, everything follows from the schedule and the trained history, so a run can continue
from the state of another run whose history is a prefix of its schedule (forking).

When forking is exact
---------------------
A run B may continue from a state of run A, and then trains exactly as if it had trained A's
prefix itself, when:
  * A and B agree on everything that shapes training apart from the schedule
    (``TrainConfig.training_identity``: model, hyperparameters, seed) and on the data;
  * every phase A finished is a phase of B with the same C, the same method (at C > 1; full resolution
    is the same for every method) and the same number of steps;
  * A's current phase has B's C and has not gone past B's length for that phase; with a
    phase-length-dependent LR (``lr_schedule: cosine``) it must also have B's planned length,
    since its LR at each step depends on where the phase ends (step decay and warmup do not);
  * the state was saved at an evaluation point of both runs (an epoch boundary or a phase end
    of both), so the records, losses and counters so far are B's own.
``fork_point`` computes the last such step for two fixed schedules.
"""

from __future__ import annotations

from ..schedule import Schedule
from .base import Done, ScheduleController, Train, Transition


class FixedSchedule(ScheduleController):
    name = "fixed"

    def __init__(self, schedule: Schedule, eval_every=None):
        self.schedule, self.eval_every = schedule, eval_every

    def bind(self, steps_per_epoch):
        super().bind(steps_per_epoch)
        self.steps = self.schedule.phase_steps(steps_per_epoch)
        self.bounds = [0]
        for n in self.steps:
            self.bounds.append(self.bounds[-1] + n)

    def describe(self):
        return str(self.schedule)

    def total_steps(self):
        return self.bounds[-1]

    def planned_steps(self, phase_index):
        return self.steps[phase_index]

    def next_action(self, progress):
        i, done = len(progress.phases) - 1, progress.phases[-1]["steps"]
        if done >= self.steps[i]:
            if i + 1 == len(self.steps):
                return Done(f"schedule {self.schedule} finished")
            nxt = self.schedule.phases[i + 1].C
            return Transition(nxt, f"planned: phase {i + 1} ends after {self.steps[i]} steps")
        return Train(min(self._next_eval(progress), self.bounds[i + 1]))

    def eval_points(self) -> set[int]:
        end = self.bounds[-1] + 1
        return set(range(0, end, self.steps_per_epoch)) | set(range(0, end, self.every)) | set(self.bounds)

    def accepts(self, phases, step, lr_needs_length):
        plan = self.schedule.phases
        if len(phases) > len(plan):
            return f"it trained {len(phases)} phases, {self.schedule} has {len(plan)}"
        for j, ph in enumerate(phases):
            if ph["C"] != plan[j].C:
                return f"its phase {j + 1} trained at C={ph['C']}, {self.schedule} has C={plan[j].C}"
            last = j == len(phases) - 1
            if (not last and ph["steps"] != self.steps[j]) or ph["steps"] > self.steps[j]:
                return (
                    f"its phase {j + 1} trained {ph['steps']} steps, {self.schedule} plans {self.steps[j]} "
                    f"({'a different length' if not last else 'fewer'})"
                )
            if last and lr_needs_length and 0 < ph["steps"] and ph.get("planned") != self.steps[j]:
                return (
                    f"its phase {j + 1} was planned at {ph.get('planned')} steps and the cosine LR depends on "
                    f"where a phase ends; {self.schedule} plans {self.steps[j]}"
                )
        if step not in self.eval_points():
            return f"step {step} is not an evaluation point of {self.schedule} (an epoch boundary or a phase end)"
        return None

    def labels(self, record: dict) -> dict:
        """schedule, method, phase_end / schedule_done of a record as this schedule sees it (a forked history)."""
        end = record["step"] == self.bounds[record["phase"]]
        last = record["phase"] == len(self.steps)
        why = (
            (
                f"schedule {self.schedule} finished"
                if last
                else f"planned: phase {record['phase']} ends after {self.steps[record['phase'] - 1]} steps"
            )
            if end
            else None
        )
        return {
            "schedule": str(self.schedule),
            "method": self.schedule.label,
            "phase_end": end,
            "schedule_done": end and last,
            "reason": why,
        }


def fork_point(
    parent: Schedule, child: Schedule, steps_per_epoch: int, lr_needs_length: bool = False, eval_every=None
) -> int:
    """The last step at which a run of `child` may start from a saved state of a run of `parent`
    (same training identity), training exactly as if it had trained that prefix itself; 0 if none.

    The state must be saved at an evaluation point of both, so the answer is the last common
    evaluation point within the shared prefix of phases (see the module docstring).
    """
    a, b = FixedSchedule(parent, eval_every), FixedSchedule(child, eval_every)
    a.bind(steps_per_epoch)
    b.bind(steps_per_epoch)
    shared = 0
    for j, (pa, pb) in enumerate(zip(parent.phases, child.phases)):
        if pa.C != pb.C or (pa.C > 1 and pa.method != pb.method):  # C = 1 is the same for every method
            break
        if a.steps[j] == b.steps[j]:
            shared += a.steps[j]
            continue
        if not lr_needs_length:
            shared += min(a.steps[j], b.steps[j])
        break
    return max(p for p in a.eval_points() & b.eval_points() if p <= shared)
