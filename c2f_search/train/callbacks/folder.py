"""``RunFolder``: the ``train`` command's folder (``layout.RunDir``), written as the run goes."""

from __future__ import annotations

from ...files import save_checkpoint
from ...layout import RunDir
from ...schema import record_table, write_table
from .base import Callback


class RunFolder(Callback):
    """``checkpoints/last.pt`` and ``metrics.parquet`` at every record, a checkpoint at every phase end,
    ``final.pt`` at the end and ``averaged.pt`` for a weight-averaged model."""

    def __init__(self, out):
        self.folder = RunDir(out)

    def _metrics(self, run) -> None:
        write_table(record_table(run.history), self.folder.metrics)

    def on_eval_end(self, run, record):
        state = run.state_dict()
        if record["averaged"]:
            save_checkpoint({**state, "model": run.averaging.averaged()}, self.folder.averaged)
        save_checkpoint(state, self.folder.last)
        self._metrics(run)

    def on_phase_end(self, run, record):
        if not record["schedule_done"]:
            save_checkpoint(run.state_dict(), self.folder.phase_end(record["phase"], record["C"]))

    def on_fit_end(self, run):
        save_checkpoint(run.state_dict(), self.folder.final)
        self._metrics(run)
