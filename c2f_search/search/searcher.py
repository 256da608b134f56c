"""Optuna through Ray Tune's ``OptunaSearch``: multi-objective (metric up, FLOPs down)."""
from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

from ..errors import SpaceError
from ..spaces import Space

STUDY = "c2f-search"
METRICS, MODES = ["val_metric", "train_flops"], ["max", "min"]


class C2FOptunaSearch(OptunaSearch):
    """Only a trial whose schedule finished is COMPLETE; one stopped early (ASHA) is PRUNED,
    so unfinished schedules never reach the study's Pareto front."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result is not None and not error and not result.get("schedule_done"):
            result = None
        super().on_trial_complete(trial_id, result, error)


def make_sampler(name: str, space: Space, seed: int, epochs):
    if name == "auto":
        name = "grid" if space.is_grid else "tpe"
    if name == "grid":
        if not space.is_grid:
            raise SpaceError(f"{space.path}: --sampler grid needs a space with a 'schedules' list (e.g. paper.yaml)")
        if space.hparams:
            raise SpaceError(f"{space.path}: --sampler grid runs listed schedules; move searched hyperparameters to 'fixed'")
        grid = {"schedule": space.grid(epochs), **({"model": space.models} if space.searches_model else {})}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpaceError(f"--sampler {name!r}: choose tpe, nsga2, random or grid")


def make_searcher(space: Space, sampler: str, seed: int, epochs: float, storage) -> C2FOptunaSearch:
    """Multi-objective OptunaSearch over a space: val_metric up, train_flops down."""
    # an open space that allows the baseline runs it first, so every front has a reference
    baseline_first = [{"coarse_phases": 0}] if not space.is_grid and space.coarse_phases[0] == 0 else None
    return C2FOptunaSearch(space=space.define_by_run(epochs), metric=METRICS, mode=MODES,
                           points_to_evaluate=baseline_first, sampler=make_sampler(sampler, space, seed, epochs),
                           study_name=STUDY, storage=storage, seed=seed)
