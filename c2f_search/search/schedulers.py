"""Tune schedulers. ASHA compares trials at equal cumulative training FLOPs, not equal iterations,
since a coarse-phase epoch costs a fraction of a full-resolution one."""
from __future__ import annotations

from ..errors import SpaceError

SCHEDULERS = ("fifo", "asha")


def make_scheduler(name: str, max_flops: float):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    if name == "asha":
        return ASHAScheduler(time_attr="train_flops", metric="val_metric", mode="max", max_t=max_flops,
                             grace_period=max_flops / 4, reduction_factor=2)
    if name == "fifo":
        return FIFOScheduler()
    raise SpaceError(f"--scheduler {name!r}: choose {' or '.join(SCHEDULERS)}")
