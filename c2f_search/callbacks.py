"""Callbacks: what happens around a ``Run``'s phase loop without being the loop (Lightning-style).

A callback may implement any of the hooks below; a stateful one names ``state_key``, and its
``state_dict`` is saved in the run's state and handed back on resume or fork. Built-ins: weight
averaging (``averaging.py``), the progress bar and the run folder of ``c2f-search train`` (here), and
the Ray Tune reporter (``trainables/c2f.py``).
"""
from __future__ import annotations

from pathlib import Path
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


class ProgressBar(Callback):
    """A tqdm bar over the run's steps, with the phase, C, epoch, loss and metric."""

    def __init__(self, disable: bool = False):
        self.disable = disable

    def on_fit_start(self, run):
        from tqdm import tqdm
        self.bar = tqdm(total=run.total_steps, initial=run.step, unit="step", disable=self.disable, dynamic_ncols=True)
        schedule = run.schedule
        self.n_phases = len(schedule.phases) if schedule is not None else "?"
        self.total = "auto" if schedule is None or schedule.is_adaptive else f"{schedule.total_epochs:g}"

    def on_step_end(self, run):
        self.bar.set_description(f"phase {run.phase + 1}/{self.n_phases} C={run.C}", refresh=False)
        self.bar.update(1)

    def on_eval_end(self, run, record):
        self.bar.set_postfix(epoch=f"{record['epoch']:.2f}/{self.total}", loss=f"{record['train_loss']:.3f}",
                             **{run.metric_name: f"{record['val_metric']:.3f}"})

    def on_fit_end(self, run):
        self.bar.close()


class RunFolder(Callback):
    """``c2f-search train``'s folder: ``checkpoints/last.pt`` and ``metrics.parquet`` at every record, a
    checkpoint at every phase end, ``final.pt`` at the end and ``averaged.pt`` for a weight-averaged model."""

    def __init__(self, out: Path):
        self.out, self.ckdir = Path(out), Path(out) / "checkpoints"

    def _metrics(self, run) -> None:
        from .records import record_table
        from .results import write_table
        write_table(record_table(run.history), self.out / "metrics.parquet")

    def on_eval_end(self, run, record):
        from .io import save_checkpoint
        state = run.state_dict()
        if record["averaged"]:
            save_checkpoint({**state, "model": run.averaging.averaged()}, self.ckdir / "averaged.pt")
        save_checkpoint(state, self.ckdir / "last.pt")
        self._metrics(run)

    def on_phase_end(self, run, record):
        from .io import save_checkpoint
        if not record["schedule_done"]:
            save_checkpoint(run.state_dict(), self.ckdir / f"phase{record['phase']}-C{record['C']}.pt")

    def on_fit_end(self, run):
        from .io import save_checkpoint
        save_checkpoint(run.state_dict(), self.ckdir / "final.pt")
        self._metrics(run)

