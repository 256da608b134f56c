"""A Lightning callback that trains a ``LightningModule``'s model coarse to fine (``pip install
'c2f-search[lightning]'``; docs/own_loop.md). It drives ``CoarseToFine`` (``train/own_loop.py``), so it trains as
``c2f-search train`` and a plain loop do: before every training batch it hands the module the step
(``module.c2f_step``: its ``transform`` and ``keep_index``), at a transition it puts the moved model in the
module's attribute and rebuilds the optimizer and LR schedule through ``configure_optimizers``, and after every
batch it logs C, the phase and the cumulative training FLOPs through the module's logger."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from .errors import LoopMismatch
from .train.own_loop import CoarseToFine


class CoarseToFineCallback(Callback):
    def __init__(self, schedule, attr: str = "model", full=None, steps_per_epoch: int | None = None):
        """`schedule`: a text, a ``Schedule`` or an exported file; `attr`: the module attribute that holds the
        model; `steps_per_epoch`: checked against the trainer's batches per epoch where given."""
        self.schedule, self.attr, self.full, self.expected = schedule, attr, full, steps_per_epoch
        self.c2f: CoarseToFine | None = None
        self.train_flops = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not isinstance(getattr(pl_module, self.attr, None), torch.nn.Module):
            raise LoopMismatch(
                f"{type(pl_module).__name__} has no model in the attribute {self.attr!r}: pass "
                f"CoarseToFineCallback(..., attr=NAME) with the attribute that holds it"
            )

    def on_train_start(self, trainer, pl_module) -> None:
        batches = trainer.num_training_batches
        if self.expected is not None and self.expected != batches:
            raise LoopMismatch(
                f"the trainer has {batches} batches per epoch, the schedule was given steps_per_epoch="
                f"{self.expected}: make the data loader drop the last partial batch (drop_last=True), or fix it"
            )
        model = getattr(pl_module, self.attr)
        self.c2f = CoarseToFine(self.schedule, model, batches, self.full)
        if self.c2f.model is not model:  # moved to the first phase: its optimizer must hold the new parameters
            self._install(trainer, pl_module)

    def _install(self, trainer, pl_module) -> None:
        setattr(pl_module, self.attr, self.c2f.model)
        trainer.strategy.setup_optimizers(trainer)  # configure_optimizers, for the new model's parameters

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = self.c2f.step()
        if step.transition:
            self._install(trainer, pl_module)
        pl_module.c2f_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        size = _batch_size(batch)
        self.train_flops += self.c2f.step_flops(size)
        pl_module.log_dict(
            {"c2f/C": float(self.c2f.C), "c2f/phase": float(self.c2f.phase + 1), "c2f/train_flops": self.train_flops},
            on_step=True,
            on_epoch=False,
            batch_size=size,
        )
        if self.c2f.done:  # the schedule's end, whatever max_epochs says
            trainer.should_stop = True


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values()))
    return int(first.shape[0])
