"""Ray Tune trainables: thin adapters that run c2f_search's training core inside a trial."""

from .c2f import train_schedule, trial_config

__all__ = ["train_schedule", "trial_config"]
