"""Callbacks around a ``Run``'s phase loop (Lightning-style): the contract (``base.Callback``), the
progress bar, the ``train`` command's run folder and checkpoint weight averaging."""

from .averaging import WeightAverage
from .base import Callback
from .folder import RunFolder
from .progress import ProgressBar

__all__ = ["Callback", "ProgressBar", "RunFolder", "WeightAverage"]
