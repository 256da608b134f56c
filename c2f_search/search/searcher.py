"""Optuna through Ray Tune's ``OptunaSearch``: multi-objective (metric up, FLOPs down)."""

from __future__ import annotations

import json
import pickle

import optuna
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from ..config import SEARCHABLE
from ..errors import SpaceError
from .space import Space

STUDY = "c2f-search"
METRICS, MODES = ["val_metric", "train_flops"], ["max", "min"]


def load_study(db) -> optuna.Study:
    """The search's Optuna study in DIR/optuna.db; a missing or damaged file is one error naming it."""
    import sqlalchemy.exc

    if not db.is_file():  # SQLite would create an empty one
        raise SpaceError(
            f"{db}: not found, and the search's Optuna study lives there; restore the file, or start "
            f"a new search in another --out ('c2f-search pareto' still reads the results so far)"
        )
    try:
        return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except (KeyError, RuntimeError, sqlalchemy.exc.SQLAlchemyError) as e:
        why = str(e).splitlines()[0][:200] if not isinstance(e, KeyError) else f"it holds no study {STUDY!r}"
        raise SpaceError(
            f"{db}: cannot be read as the search's Optuna study ({why}); restore the file, or start "
            f"a new search in another --out"
        ) from None


# consecutive samples that all repeat a configuration already run: the space is used up
MAX_REPEATS = 200


# Ray's private attributes this module uses, where Ray has no public API: the trial map and study of
# OptunaSearch (to tell Optuna about repeats, and to reconnect a moved folder's study), and the experiment
# and sample count of the SearchGenerator that Tune restores. Only this module touches them, and
# ``test_the_private_ray_state_this_module_uses_is_still_there`` fails when a Ray release moves one.
RAY_PRIVATE = {
    OptunaSearch: ("_ot_trials", "_ot_study", "_storage", "_study_name", "_sampler"),
    SearchGenerator: ("_experiment", "_total_samples", "_finished"),
}


def optuna_state(search: OptunaSearch) -> tuple[dict, optuna.Study]:
    """(Tune trial id -> Optuna trial or its number, the study) of a Ray ``OptunaSearch``."""
    return search._ot_trials, search._ot_study


def config_key(config: dict) -> str:
    """What a trial trains: its model, schedule and the hyperparameters it sets (not the sampler's raw
    parameters, several of which can give the same schedule)."""
    return json.dumps(
        {k: v for k, v in config.items() if k in ("schedule", "model") or k in SEARCHABLE}, sort_keys=True
    )


class C2FOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about schedules and never trains a configuration twice.

    * Only a trial whose schedule finished is COMPLETE; one stopped early (ASHA) is PRUNED, so
      unfinished schedules never reach the study's Pareto front.
    * A sampled configuration equal to one already run or running (``config_key``) is not given to
      Tune: its Optuna trial gets the first one's outcome (now, or when that trial ends), tagged
      ``repeat_of``, and the sampler is asked again. When ``MAX_REPEATS`` samples in a row are repeats,
      the space is used up and the search ends (``exhausted``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._first: dict[str, str] = {}  # config key -> Tune trial id that trains it
        self._key: dict[str, str] = {}  # Tune trial id -> its config key
        self._outcome: dict[str, tuple] = {}  # Tune trial id -> (values, state) told to Optuna
        self._waiting: dict[str, list] = {}  # Tune trial id -> Optuna trial numbers repeating it
        self._imported: dict[str, int] = {}  # a trial --warm-start imported -> its Optuna trial number
        self.repeats, self.exhausted = 0, False

    def suggest(self, trial_id):
        for _ in range(MAX_REPEATS):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            key = config_key(config)
            first = self._first.setdefault(key, trial_id)
            if first == trial_id:
                self._key[trial_id] = key
                return config
            trials, _ = optuna_state(self)
            ot = trials.pop(trial_id)  # the next ask() gives this Tune trial a new Optuna trial
            ot.set_user_attr("repeat_of", self._imported[first] if first in self._imported else _number(trials[first]))
            self.repeats += 1
            if first in self._outcome:
                self._tell(ot.number, *self._outcome[first])
            else:
                self._waiting.setdefault(first, []).append(ot.number)
        self.exhausted = True
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result is not None and not error and not result.get("schedule_done"):
            result = None
        super().on_trial_complete(trial_id, result, error)
        S = optuna.trial.TrialState
        values = [result[m] for m in self.metric] if result else None
        self._outcome[trial_id] = (values, S.COMPLETE if values else S.FAIL if error else S.PRUNED)
        if trial_id in self._key:  # known again after a restore
            self._first.setdefault(self._key[trial_id], trial_id)
        for number in self._waiting.pop(trial_id, []):
            self._tell(number, *self._outcome[trial_id])

    def add_done(self, key: str, number: int, values) -> None:
        """A configuration trained before this search (--warm-start imported it as Optuna trial `number`):
        a sample that repeats it takes its values and is not trained."""
        first = f"warm-start-{number}"
        self._first.setdefault(key, first)
        self._imported[first] = number
        self._outcome[first] = (values, optuna.trial.TrialState.COMPLETE)

    def restore(self, checkpoint_path):
        """A trial that had not ended when the driver stopped may be lost with it: forget it, so that no
        repeat waits for a trial that never ends (its waiting Optuna trials are closed as FAIL after fit)."""
        super().restore(checkpoint_path)
        self._first = {k: t for k, t in self._first.items() if t in self._outcome}
        self._waiting = {}

    def _tell(self, number: int, values, state) -> None:
        optuna_state(self)[1].tell(number, values, state=state)

    # Tune pickles the searcher (tuner.pkl, and its state at every snapshot) and restores it by unpickling.
    # The study's storage is left out: an RDBStorage connects to its database file when it is unpickled,
    # and a moved search folder no longer has it there. ``reopen`` connects to the study where it is now.
    # Optuna trials (which hold the storage) are kept as their numbers, which Study.tell takes as well.
    def __getstate__(self):
        return self.__dict__ | {
            "_storage": None,
            "_ot_study": None,
            "_ot_trials": {t: _number(ot) for t, ot in self._ot_trials.items()},
        }

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def reopen(self, storage) -> None:
        """Use the study in `storage` (the search folder's as it is now), keeping the sampler's state."""
        self._storage = storage
        self._ot_study = optuna.load_study(
            study_name=self._study_name, storage=storage, sampler=self._sampler, pruner=optuna.pruners.NopPruner()
        )

    def requeue_lost(self) -> int:
        """Trials the study holds as RUNNING that this restored searcher never handed to Tune's saved state were
        lost with a killed driver: fail each and queue its parameters again, so that the next trial trains it
        (a grid sampler would otherwise draw among every unfinished entry, one still running included)."""
        trials, study = optuna_state(self)
        known = {_number(ot) for ot in trials.values()}
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        lost = [t for t in running if t.number not in known]
        for t in lost:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)
        return len(lost)


def _number(ot) -> int:
    return ot if isinstance(ot, int) else ot.number


class C2FSearchGenerator(SearchGenerator):
    """Tune's wrapper of the searcher, restored for the search folder as it is now.

    Tune restores it by unpickling what it held when it was saved: the folder's path then (trials it
    creates would be written there, though the folder may have moved since; Tune moves only the trials it
    restores) and the number of trials then. ``run_search`` sets ``resume_as`` before a resume: where the
    experiment and the study are now, and the number of trials asked for, which may be higher."""

    resume_as: dict | None = None

    def restore_from_dir(self, dirpath: str):
        super().restore_from_dir(dirpath)
        now = C2FSearchGenerator.resume_as
        # as Tune's TuneController._restore_trials moves a restored trial's storage
        storage = self._experiment.storage
        storage.storage_filesystem, storage.storage_fs_path = now["experiment"]
        self.searcher.reopen(now["study"])
        self.searcher.requeue_lost()
        if now["trials"] > self._total_samples:
            self._total_samples, self._finished = now["trials"], False


# random trials before the GP models the front: Optuna's default (10) would leave a 12-trial search 2 GP trials
GP_STARTUP_TRIALS = 5


def make_sampler(name: str, space: Space, seed: int, epochs):
    if name == "auto":  # recorded by a search started before auto meant gp (cli/search.py): what it ran
        name = "grid" if space.is_grid else "tpe"
    if name == "grid":
        if not space.is_grid:
            raise SpaceError(f"{space.path}: --sampler grid needs a space with a 'schedules' list (e.g. paper.yaml)")
        if space.hparams:
            raise SpaceError(
                f"{space.path}: --sampler grid runs listed schedules; move searched hyperparameters to 'fixed'"
            )
        grid = {"schedule": space.grid(epochs), **({"model": space.models} if space.searches_model else {})}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "gp":  # Optuna's GP with logEHVI for two objectives; conditional parameters by independent TPE
        return optuna.samplers.GPSampler(
            seed=seed,
            n_startup_trials=GP_STARTUP_TRIALS,
            deterministic_objective=True,  # a repeat is told the first outcome, never measured again
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpaceError(f"--sampler {name!r}: choose tpe, gp, nsga2, random or grid")


def make_searcher(space: Space, sampler: str, seed: int, epochs: float, storage) -> C2FOptunaSearch:
    """Multi-objective OptunaSearch over a space: val_metric up, train_flops down."""
    # an open space that allows the baseline runs it first, so every front has a reference
    baseline_first = [{"coarse_phases": 0}] if not space.is_grid and space.coarse_phases[0] == 0 else None
    return C2FOptunaSearch(
        # the GP models only the parameters every trial has: with gp, every trial sets them all
        space=space.define_by_run(epochs, flat=sampler == "gp"),
        metric=METRICS,
        mode=MODES,
        points_to_evaluate=baseline_first,
        sampler=make_sampler(sampler, space, seed, epochs),
        study_name=STUDY,
        storage=storage,
        seed=seed,
    )
