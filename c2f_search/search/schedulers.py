"""Tune schedulers. ASHA, MOASHA and PBT compare trials at equal cumulative training FLOPs, not equal
iterations, since a coarse-phase epoch costs a fraction of a full-resolution one."""

from __future__ import annotations

import math
import random

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..analysis.pareto import crowding_distance, front_ranks
from ..errors import SpaceError
from ..schedule import record_schedule
from ..settings import SCHEDULERS

# the key of a trial's report that holds its planned total training FLOPs (trainables/c2f.py)
PLANNED = "planned_flops"


def keeps(rung: dict, trial_id: str, eta: float) -> bool:
    """Whether `trial_id` goes on from a rung: `rung` maps every trial that reached it (this one included)
    to (its validation metric there, its planned total training FLOPs). The trials are ordered by front rank
    (non-dominated sorting: metric up, planned FLOPs down), then by crowding distance within a rank, and
    the first ceil(n / eta) go on; a trial on the rung's front (rank 0) always goes on."""
    ids = list(rung)
    points = [rung[i] for i in ids]
    ranks = front_ranks(points)
    me = ids.index(trial_id)
    if ranks[me] == 0:
        return True
    crowd = [0.0] * len(ids)
    for r in set(ranks):
        members = [i for i in range(len(ids)) if ranks[i] == r]
        for i, d in zip(members, crowding_distance([points[i] for i in members])):
            crowd[i] = d
    order = sorted(range(len(ids)), key=lambda i: (ranks[i], -crowd[i]))
    return order.index(me) < math.ceil(len(ids) / eta)


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving for two objectives: ASHA's FLOPs-aligned rungs, a rung's decision by
    non-dominated sorting (``keeps``) instead of one metric.

    At a rung (``grace_period`` x ``reduction_factor``^k cumulative training FLOPs, below ``max_t``) a
    trial is compared with every trial that reached the rung before it on (validation metric there, higher
    better; planned total training FLOPs, lower better: known before it starts, from its schedule and the
    ledger; for a learned schedule its upper bound). The best 1/eta by front rank go on, and a trial
    non-dominated at its rung never stops, so a cheap schedule that sits on the front below a costly one
    is kept. Ties within a rank are broken by crowding distance, not hypervolume contribution: it needs no
    reference point (at a rung the metric is a partial one, so any reference would be arbitrary) and it
    keeps the ends and the spread of the front along the FLOPs axis, which is what the final front needs.
    The full-resolution baseline is ranked like any trial but never stopped: every saving is measured
    against it (the paper's definition), and a search without it could not say what its front saves.
    Like ASHA, a result past several rungs at once is recorded at the highest."""

    def __init__(self, max_t: float, grace_period: float, reduction_factor: float = 2):
        super().__init__()
        self.eta = reduction_factor
        self.rungs, t = [], grace_period
        while t < max_t:
            self.rungs.append(t)
            t *= reduction_factor
        self.tables: dict[float, dict] = {t: {} for t in self.rungs}  # rung -> trial id -> (metric, planned)
        self.stopped: list[str] = []

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        t, cost = result.get("train_flops"), result.get(PLANNED)
        if t is None or cost is None:
            return TrialScheduler.CONTINUE
        for rung in reversed(self.rungs):
            table = self.tables[rung]
            if t < rung or trial.trial_id in table:
                continue
            metric = result.get("val_metric")
            table[trial.trial_id] = (float("nan") if metric is None else metric, cost)
            if keeps(table, trial.trial_id, self.eta) or _is_baseline(result):
                return TrialScheduler.CONTINUE
            self.stopped.append(trial.trial_id)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def debug_string(self) -> str:
        return f"MOASHA: {len(self.stopped)} trials stopped at rungs {self.rungs}"


def _is_baseline(result: dict) -> bool:
    text = result.get("schedule")
    return text is not None and record_schedule(text).is_baseline


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
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    if name == "moasha":
        return MOASHA(max_t=max_flops, grace_period=max_flops / 4, reduction_factor=2)
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
