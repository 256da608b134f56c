"""``--warm-start DIR ...``: a new search starts from earlier searches' trials.

* **Same setting** (``setting``: the data, the models and their settings, the init, the epochs, the recipe,
  the objective, the space's fixed settings, the metric target): each earlier finished trial enters the new
  study as a completed trial with its values (``optuna.trial.create_trial``, ``Study.add_trial``), its rows
  are copied into ``DIR/warm_start.parquet`` (``SearchDir.warm_start``), marked with the folder they came
  from, so they count in the front, and a sampled configuration equal to one of them is not trained again.
* **Another setting**: the earlier front's parameters (``Study.best_trials``) are enqueued as the new
  study's first trials (``Study.enqueue_trial``), and are trained.

Everything is read and checked before Ray starts (``read``); the new study is written once, when the search
is built (``apply``), so a resumed search never imports twice.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from ..errors import NoResults, SpaceError
from ..files import reading_lock
from ..layout import SearchDir
from ..schema import row_table, write_table
from ..settings import SearchSettings
from .searcher import config_key, load_study, optuna_state
from .space import Space, load_space

DATA_IDENTITY = ("train", "val", "labels", "task", "num_mel_bins", "target_length", "labelled")


def setting(settings: SearchSettings, space: Space) -> dict:
    """What a trial's values depend on besides its sampled configuration: two searches that agree on it
    measure the same thing."""
    return {
        "data": {k: getattr(settings.data, k) for k in DATA_IDENTITY},
        "models": space.models,
        "model_kwargs": settings.model_kwargs,
        "init": (settings.init or {}).get("sha256"),
        "epochs": settings.epochs or space.epochs,
        "recipe": settings.recipe,
        "objective": space.objective,
        "fixed": space.fixed,
        "metric_target": settings.metric_target or space.metric_target,
    }


@dataclass
class Earlier:
    """What one earlier search brings: `same` setting or not; the trials to import (same) or enqueue."""

    folder: str
    same: bool
    trials: list = field(default_factory=list)  # (FrozenTrial, config) of each trial brought
    rows: list = field(default_factory=list)  # the same setting: the imported trials' rows

    def record(self) -> dict:
        return {"folder": self.folder, "case": "import" if self.same else "enqueue", "trials": len(self.trials)}


def read(dirs: list[str], settings: SearchSettings, space: Space, epochs: float) -> list[Earlier]:
    """Read and check each earlier search (under its folder's lock, read-only): one line and exit 2 for a
    folder that is not a search, or one whose trials' parameters the new space does not ask for."""
    out = []
    for d in dirs:
        folder = SearchDir(Path(d).resolve())
        what = f"--warm-start {d}"
        if not folder.is_search():
            raise SpaceError(f"{what}: not the folder of a search (no search.json); give the --out DIR of a search")
        with reading_lock(folder.lock, what):
            earlier = SearchSettings.load(folder.path)
            same = setting(earlier, load_space(earlier.space, earlier.recipe)) == setting(settings, space)
            study = load_study(folder.study)
            done = [
                t
                for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "repeat_of" not in t.user_attrs
            ]
            numbers = {t.number for t in done}
            chosen = done if same else [t for t in study.best_trials if t.number in numbers]
            w = Earlier(str(folder.path), same, [(t, _replay(space, epochs, t, same, what)) for t in chosen])
            if same:
                _attach_rows(w, folder.path, what)
        out.append(w)
    return out


def _replay(space: Space, epochs: float, t, same: bool, what: str) -> dict:
    """The configuration the new space gives for trial `t`'s parameters; each must be one the new space asks
    for, within its range (the same setting: with the same distribution, as the new study stores them)."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    try:
        study = optuna.create_study(directions=["maximize", "minimize"])  # in memory: only to ask the new space
        study.enqueue_trial(t.params)
        trial = study.ask()
        with warnings.catch_warnings():  # a value out of range: Optuna warns and samples; refused below instead
            warnings.simplefilter("ignore")
            config = space.define_by_run(epochs, flat=True)(trial)  # asks whatever a gp search set
    except ValueError:  # a categorical value that is not among the new choices
        config = None
    finally:
        optuna.logging.set_verbosity(level)
    for name, value in t.params.items():
        mine = trial.distributions.get(name)
        if mine is None or trial.params[name] != value or (same and mine != t.distributions[name]):
            raise SpaceError(
                f"{what}: its trial {t.number} sets {name!r} = {value!r} ({t.distributions[name]}), which "
                f"{space.path} does not ask for in that form ({mine or 'no such parameter'}); warm-start from a "
                f"search whose space has the same parameters"
            )
    return config


def _attach_rows(w: Earlier, path: Path, what: str) -> None:
    """The rows of the trials to import, by configuration; a trial whose rows are gone is left out."""
    from ..analysis.rows import load_rows

    try:
        rows = [r for r in load_rows(path).to_pylist() if r["status"] == "finished"]
    except NoResults as e:
        raise SpaceError(f"{what}: {e}") from None
    by_key: dict[str, list] = {}
    for r in rows:
        by_key.setdefault(config_key(json.loads(r["config"] or "{}")), []).append(r)
    kept = []
    for t, config in w.trials:
        trial_rows = by_key.get(config_key(config), [])
        ids = {r["trial_id"] for r in trial_rows}
        if ids:
            first = min(ids)  # one Tune trial per configuration
            w.rows += [
                {**r, "warm_start": r.get("warm_start") or w.folder} for r in trial_rows if r["trial_id"] == first
            ]
            kept.append((t, config))
    w.trials = kept


def apply(earlier: list[Earlier], searcher, folder: SearchDir) -> None:
    """Write the earlier trials into the new study (and their rows into the folder), or enqueue them; one line
    per earlier search says which case applied and how many trials it brought."""
    if not earlier:
        return
    study = optuna_state(searcher)[1]
    rows = []
    for w in earlier:
        for t, config in w.trials:
            if w.same:
                source = t.user_attrs.get("warm_start", w.folder)
                ot = optuna.trial.create_trial(
                    params=t.params,
                    distributions=t.distributions,
                    values=t.values,
                    user_attrs={**t.user_attrs, "warm_start": source},
                )
                study.add_trial(ot)
                searcher.add_done(config_key(config), study.trials[-1].number, t.values)
            else:
                study.enqueue_trial(t.params, user_attrs={"warm_start": w.folder})
        rows += w.rows
        print(
            f"--warm-start {w.folder}: "
            + (
                f"same setting: {len(w.trials)} finished trials imported (not trained again; they count in the front)"
                if w.same
                else f"another setting: its front's {len(w.trials)} schedules enqueued as the first trials"
            ),
            flush=True,
        )
    if rows:
        write_table(row_table(rows), folder.warm_start)
