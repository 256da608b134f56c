"""One error base class: every mistake a user can fix is a ``C2FError``.

The CLI prints a ``C2FError`` as one line on stderr and exits with code 2; a library
caller catches ``C2FError`` (or the ``ValueError`` most of them also are). Every error keeps all
its constructor's arguments in ``args``, so it pickles: Ray carries a trial's error to the driver.
"""

from __future__ import annotations


class C2FError(Exception):
    """A problem the user can fix; the message names the file, flag or field and the fix."""


class ConfigError(C2FError, ValueError):
    """A training or search setting out of range. ``field`` is the setting's name (``lr``), so
    each front door can name it its own way (``--lr`` on the command line, ``fixed.lr`` in a space)."""

    def __init__(self, field: str, problem: str):
        super().__init__(field, problem)  # every argument in args: Ray and copy rebuild it from them
        self.field, self.problem = field, problem

    def __str__(self):
        return f"{self.field}: {self.problem}"


class ScheduleError(C2FError, ValueError):
    """A schedule spec that cannot be used; the message says how to fix it."""


class DataError(C2FError, ValueError):
    """Bad data input; the message names the file or field and the fix."""


class AudioError(DataError):
    """An audio file that cannot be used; the message names the file and the problem."""

    def __init__(self, path, problem: str):
        super().__init__(str(path), problem)
        self.path, self.problem = str(path), problem

    def __str__(self):
        return f"{self.path}: {self.problem}"


class SpaceError(C2FError, ValueError):
    """A search-space file or search setting that cannot be used; names the file, the key and the fix."""


class NoResults(C2FError, FileNotFoundError):
    """A search folder without (readable) results."""


class CheckpointError(C2FError):
    """A checkpoint that cannot be read or does not fit; names the file and what to do instead."""


class WriteError(C2FError, OSError):
    """A file that cannot be written (a read-only folder, a full disk); names the file and the cause."""


class NonFiniteLoss(C2FError, RuntimeError):
    """Training diverged (loss is NaN or infinite); the message names the step and phase."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (a cluster scheduler, a spot reclaim), handled alike: the command stops
    cleanly and says how to resume; the exit code is 128 + the signal (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ScheduleFileError(C2FError, ValueError):
    """An exported schedule file that cannot be used (a newer layout, edited by hand, not one); names the file."""


class UnmovableModel(C2FError, TypeError):
    """A model a user's own loop cannot carry through the schedule's phases, or one of another family than the
    schedule's; names what is missing, or both families."""


class LoopMismatch(C2FError, ValueError):
    """A user's loop that disagrees with the schedule: its steps per epoch, or a Lightning module without the
    attribute named for its model."""
