"""Where every file of a run folder and of a search folder lives: ``RunDir`` and ``SearchDir``. Nothing else
in the package spells one of these names, so a folder's layout is read here, in one place."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".c2f-search.lock"  # one command at a time per folder (files.folder_lock)


@dataclass(frozen=True)
class _Folder:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))  # given as text or a Path


@dataclass(frozen=True)
class RunDir(_Folder):
    """The folder of one ``train`` or ``pretrain`` run."""

    config = property(lambda self: self.path / "config.json", doc="the settings, data and front end")
    metrics = property(lambda self: self.path / "metrics.parquet", doc="one row per evaluation")
    skipped = property(lambda self: self.path / "skipped_clips.txt", doc="clips --skip-bad left out")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last = property(lambda self: self.checkpoints / "last.pt", doc="the newest state, what --resume reads")
    final = property(lambda self: self.checkpoints / "final.pt", doc="the state at the schedule's end")
    averaged = property(lambda self: self.checkpoints / "averaged.pt", doc="the weight-averaged model")
    lock = property(lambda self: self.path / LOCK_FILE)

    def phase_end(self, phase: int, C: int) -> Path:
        """The checkpoint written where phase `phase` (1-based, at C) ends."""
        return self.checkpoints / f"phase{phase}-C{C}.pt"

    def holds_run(self) -> bool:
        return self.path.is_dir() and (
            any(f.exists() for f in (self.config, self.metrics, self.skipped)) or self.checkpoints.is_dir()
        )

    def clear(self) -> None:
        """Remove the run (``--overwrite``); anything else in the folder stays."""
        for f in (self.config, self.metrics, self.skipped):
            f.unlink(missing_ok=True)
        shutil.rmtree(self.checkpoints, ignore_errors=True)


@dataclass(frozen=True)
class ConfirmFiles(_Folder):
    """What ``confirm`` writes: into the search folder, or a target's folder for ``confirm --target``."""

    table = property(lambda self: self.path / "confirm.parquet", doc="per schedule, mean and sd over seeds")
    seeds = property(lambda self: self.path / "confirm_seeds.parquet", doc="per schedule and seed")
    plot = property(lambda self: self.path / "confirm.png")
    text = property(lambda self: self.path / "confirm.txt")

    def outputs(self) -> list[Path]:
        return [self.table, self.seeds, self.plot, self.text]


@dataclass(frozen=True)
class TargetDir(ConfirmFiles):
    """``DIR/confirm/NAME``: one target of ``confirm --target NAME``, with its two Tune runs."""

    marker = property(lambda self: self.path / "target.json", doc="the target's settings; marks the folder")
    PROXY, TARGET = "proxy", "target"  # Tune experiment names inside the folder: each side's seeds


@dataclass(frozen=True)
class SearchDir(_Folder):
    """The ``--out`` folder of a search. Tune's experiment is ``search/`` here, or under ``--storage``."""

    EXPERIMENT = "search"  # Tune's experiment name, in the folder or under the storage URI
    CONFIRM = "confirm"  # confirm's Tune experiment, and the parent of the targets' folders
    TUNER_FILE = "tuner.pkl"  # Ray's pickled Tuner inside the experiment: its hash is in search.json

    settings = property(lambda self: self.path / "search.json", doc="what the search was started with")
    study = property(lambda self: self.path / "optuna.db", doc="the Optuna study (SQLite)")
    front = property(lambda self: self.path / "front.parquet")
    front_plot = property(lambda self: self.path / "front.png")
    trials = property(lambda self: self.path / "trials.parquet", doc="every (trial, evaluation) row")
    table = property(lambda self: self.path / "table.parquet", doc="Table 2/3 of every finished trial")
    summary = property(lambda self: self.path / "summary.txt")
    report = property(lambda self: self.path / "report.html")
    test_metrics = property(lambda self: self.path / "test_metrics.parquet", doc="front points on --test")
    confirm = property(lambda self: ConfirmFiles(self.path), doc="a plain confirm's files")
    confirm_dir = property(lambda self: self.path / self.CONFIRM)
    confirm_state = property(
        lambda self: self.confirm_dir / "confirm.json", doc="a plain confirm's plan, and whether it finished"
    )
    lock = property(lambda self: self.path / LOCK_FILE)
    warm_start = property(
        lambda self: self.path / "warm_start.parquet", doc="the rows of trials imported by --warm-start"
    )

    def study_url(self) -> str:
        return f"sqlite:///{self.study}"

    def experiment(self, storage: str | None = None) -> str:
        """Tune's experiment folder: ``--storage`` (a path or URI) when the search has one, else this folder."""
        return f"{(storage or str(self.path.resolve())).rstrip('/')}/{self.EXPERIMENT}"

    def tuner_file(self, experiment: str) -> str:
        return f"{experiment.rstrip('/')}/{self.TUNER_FILE}"

    def target(self, name: str) -> TargetDir:
        return TargetDir(self.confirm_dir / name)

    def is_search(self) -> bool:
        return self.settings.is_file()
