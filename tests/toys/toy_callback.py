"""A callback defined outside the package: steps trained per C, kept in the run's state."""

from c2f_search.train.callbacks.base import Callback


class StepsPerC(Callback):
    state_key = "toy_steps_per_C"

    def __init__(self):
        self.steps: dict[str, int] = {}
        self.phase_ends: list[int] = []

    def on_step_end(self, run):
        self.steps[str(run.C)] = self.steps.get(str(run.C), 0) + 1

    def on_phase_end(self, run, record):
        self.phase_ends.append(record["C"])

    def state_dict(self):
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state):
        self.steps = dict((state or {}).get("steps", {}))
