"""Callbacks: what happens around a ``Run``'s phase loop without being the loop (Lightning-style).

A callback may implement any of the hooks below; a stateful one names ``state_key``, and its
``state_dict`` is saved in the run's state and handed back on resume or fork. Built-ins: weight
averaging (``averaging.py``), the progress bar and the run folder of ``c2f-search train`` (here), and
the Ray Tune reporter (``trainables/c2f.py``).
"""

from __future__ import annotations

from typing import ClassVar


class Callback:
    state_key: ClassVar[str | None] = None  # a stateful callback's name in the run's state

    def on_fit_start(self, run) -> None:
        """When the run starts training (or continues, restored from a state)."""

    def on_step_end(self, run) -> None:
        """After every optimizer step."""

    def on_eval_end(self, run, record: dict) -> None:
        """After every record is added to ``run.history`` (an evaluation, an adopted or a final one)."""

    def on_phase_end(self, run, record: dict) -> None:
        """After ``on_eval_end`` of a record that ends a phase."""

    def on_fit_end(self, run) -> dict | None:
        """When the schedule is done. A record returned is added after the last one (weight averaging's)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict | None) -> None:
        pass
