"""Training without Ray: ``Run``, the phase loop (``run``), and the rooms it uses: the step, the input
pipeline, the evaluator, the FLOPs ledger, optimizer and LR, precision, the run's RNG, its saved state,
callbacks, and a pretraining run's fine-tune."""

from .callbacks import Callback
from .run import Run

__all__ = ["Callback", "Run"]
