"""``ProgressBar``: a tqdm bar over a run's steps."""

from __future__ import annotations

from .base import Callback


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
        self.bar.set_postfix(
            epoch=f"{record['epoch']:.2f}/{self.total}",
            loss=f"{record['train_loss']:.3f}",
            **{run.metric_name: f"{record['val_metric']:.3f}"},
        )

    def on_fit_end(self, run):
        self.bar.close()
