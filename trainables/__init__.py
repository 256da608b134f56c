"""Ray Tune trainables: thin adapters that run c2f_search's training core inside a trial."""
from .c2f import REPORT_KEYS, train_schedule

__all__ = ["train_schedule", "REPORT_KEYS"]
