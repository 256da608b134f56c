"""Tune schedulers. ASHA and PBT compare trials at equal cumulative training FLOPs, not equal
iterations, since a coarse-phase epoch costs a fraction of a full-resolution one."""

from __future__ import annotations

import random

from ..errors import SpaceError
from ..settings import SCHEDULERS


class LowerC:
    """PBT's explore step for C: a member that copies a better one keeps the donor's C or, with
    probability `p`, moves to the next finer C of the space; it never goes coarser (custom_explore_fn)."""

    def __init__(self, Cs: list[int], p: float, seed: int):
        self.Cs, self.p, self.rng = sorted(Cs, reverse=True), p, random.Random(seed)

    def __call__(self, config: dict) -> dict:
        C = config["C"]
        if C != self.Cs[-1] and self.rng.random() < self.p:
            config["C"] = self.Cs[self.Cs.index(C) + 1]
        return config


def make_scheduler(name: str, max_flops: float, space=None, epochs: float | None = None, seed: int = 0):
    """`max_flops`: the full-resolution baseline's FLOPs over the epoch budget (ASHA's max_t; PBT's
    interval is a fraction of it per epoch)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if name == "asha":
        return ASHAScheduler(
            time_attr="train_flops",
            metric="val_metric",
            mode="max",
            max_t=max_flops,
            grace_period=max_flops / 4,
            reduction_factor=2,
        )
    if name == "fifo":
        return FIFOScheduler()
    if name == "pbt":
        if space is None or not space.is_adaptive:
            raise SpaceError("--scheduler pbt needs a learned space (one with 'controller:'), e.g. --space adaptive")
        pbt = space.pbt
        mutations = {k: _tune_domain(v) for k, v in space.hparams.items() if k in ("lr", "weight_decay", "mixup")}
        return PopulationBasedTraining(
            time_attr="train_flops",
            metric="val_metric",
            mode="max",
            perturbation_interval=pbt["interval"] * max_flops / epochs,
            quantile_fraction=pbt["quantile"],
            hyperparam_mutations=mutations or None,
            custom_explore_fn=LowerC([*space.C_values, 1], pbt["lower_C"], seed),
        )
    raise SpaceError(f"--scheduler {name!r}: choose {' or '.join(SCHEDULERS)}")


def _tune_domain(spec):
    """A space's searched value as a Tune domain (PBT's initial draw and its mutations)."""
    from ray import tune

    if isinstance(spec, list):
        return tune.choice(spec)
    lo, hi = spec["low"], spec["high"]
    if spec.get("int"):
        return tune.randint(int(lo), int(hi) + 1)
    return tune.loguniform(lo, hi) if spec.get("log") else tune.uniform(lo, hi)


def population(space, epochs: float) -> dict:
    """PBT's param_space: each member draws a method (with ``later_method``, a pair: lowering C past the
    first may then switch the method, e.g. from pooling to patchout) and the non-mutable searched values
    once (Ray runs no search algorithm with PBT), starts at the space's largest C and learns the rest."""
    from ray import tune

    # the schedule names its methods, so one choice draws them
    return {
        "schedule": tune.choice([str(s) for s in space.population_schedules(epochs)]),
        "C": max(space.C_values),
        **{k: _tune_domain(v) for k, v in space.hparams.items()},
    }
