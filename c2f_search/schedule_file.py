"""An exported schedule (``c2f-search export``): a small JSON or YAML file with everything needed to repeat a
search's schedule in another training loop: the schedule, its steps per epoch, each phase's frame shift,
feature length and model geometry, the hyperparameters the search chose, and the run it came from with its
measured saving and metric. A checksum over the content tells an exported file from a hand-edited one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ScheduleError, ScheduleFileError
from .geometry import Geometry
from .schedule import Schedule, parse_schedule

FORMAT = "c2f-search schedule"
VERSION = 1  # the newest layout this version reads and writes
SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class ScheduleFile:
    schedule: Schedule
    steps_per_epoch: int
    full: Geometry  # the full-resolution input
    model: str  # the model it was searched with (its family must match the model it trains)
    model_kwargs: dict = field(default_factory=dict)
    base_frame_shift_ms: float = 10.0
    hyperparameters: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # the search, trial, checkpoint, saving and metric


def phase_table(schedule: Schedule, steps_per_epoch: int, full: Geometry, base_frame_shift_ms: float) -> list[dict]:
    """Per phase: C, method, epochs, steps, the frame shift and feature length its features are read at, and
    the model geometry it trains."""
    from .compress import get_method

    out = []
    for p, steps in zip(schedule.phases, schedule.phase_steps(steps_per_epoch)):
        m = get_method(p.method)
        out.append(
            {
                "C": p.C,
                "method": p.method,
                "epochs": p.epochs,
                "steps": steps,
                "frame_shift_ms": m.frame_shift(base_frame_shift_ms, p.C),
                "feature_length": m.feature_length(full.frames, p.C),
                "geometry": m.geometry(p.C, full).as_dict(),
            }
        )
    return out


def _checksum(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def schedule_content(f: ScheduleFile) -> dict:
    """The file's content, checksum included."""
    content = {
        "format": FORMAT,
        "version": VERSION,
        "schedule": str(f.schedule),
        "steps_per_epoch": f.steps_per_epoch,
        "model": f.model,
        "model_kwargs": dict(f.model_kwargs),
        "full": f.full.as_dict(),
        "base_frame_shift_ms": f.base_frame_shift_ms,
        "phases": phase_table(f.schedule, f.steps_per_epoch, f.full, f.base_frame_shift_ms),
        "hyperparameters": dict(f.hyperparameters),
        "source": dict(f.source),
    }
    return {**content, "sha256": _checksum(content)}


def dump_schedule_file(f: ScheduleFile, path) -> str:
    """The text of `f` as `path`'s suffix says (.json, .yaml or .yml)."""
    content = schedule_content(f)
    if Path(path).suffix == ".json":
        return json.dumps(content, indent=1) + "\n"
    import yaml

    return yaml.safe_dump(content, sort_keys=False)


def read_schedule_file(path) -> ScheduleFile:
    """An exported schedule; a file of a newer layout, an edited one or not one at all is one ScheduleFileError."""
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise ScheduleFileError(f"{p}: an exported schedule ends in {', '.join(SUFFIXES)} (c2f-search export)")
    try:
        text = p.read_text()
    except OSError as e:
        raise ScheduleFileError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        if p.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except ValueError as e:  # json's and yaml's parse errors are ValueErrors or YAMLErrors
        raise ScheduleFileError(f"{p}: not valid {p.suffix[1:].upper()} ({str(e).splitlines()[0]})") from None
    except Exception as e:  # yaml.YAMLError
        raise ScheduleFileError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ScheduleFileError(f"{p}: not a schedule written by c2f-search export (no 'format: {FORMAT}')")
    version = d.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ScheduleFileError(
            f"{p}: written by a newer c2f-search (layout version {version!r}; this one reads up to {VERSION}): "
            f"upgrade c2f-search, or pass the schedule text ({d.get('schedule')!r}) instead"
        )
    content = {k: v for k, v in d.items() if k != "sha256"}
    if d.get("sha256") != _checksum(content):
        raise ScheduleFileError(
            f"{p}: edited by hand (its sha256 no longer matches its content); export it again with "
            f"'c2f-search export', or pass a schedule text such as {d.get('schedule')!r} instead"
        )
    try:
        return ScheduleFile(
            parse_schedule(d["schedule"]),
            int(d["steps_per_epoch"]),
            Geometry(**d["full"]),
            d["model"],
            d["model_kwargs"],
            float(d["base_frame_shift_ms"]),
            d["hyperparameters"],
            d["source"],
        )
    except (KeyError, TypeError, ScheduleError) as e:
        raise ScheduleFileError(f"{p}: a field is missing or wrong ({e}); export it again") from None
