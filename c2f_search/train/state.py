"""A run's saved state: what it must agree on to continue somewhere (its identity), and the checks
that refuse a state that cannot continue, saying why. A state continues a run exactly when it is the
run's own (resume) or one whose trained history the controller accepts as a prefix (fork)."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import CheckpointError

STATE_VERSION = 4  # 4: callbacks' state under "callbacks" (3 kept weight averaging's under "averaging")


def identity(cfg, data, steps_per_epoch: int) -> dict:
    """What a saved state must agree on to continue a run (beyond the schedule)."""
    return {
        "config": cfg.training_identity(),
        "frontend": data.fe.key(),
        "features": data.feature_dtype,
        "norm": [float(v) for v in (data.mean, data.std)],
        "num_classes": data.num_classes,
        "steps_per_epoch": steps_per_epoch,
    }


def upgrade(s: dict) -> dict:
    """A state of an earlier format this version still reads, in today's form."""
    if s.get("version") == 3:
        s = {**s, "version": 4, "callbacks": {"weight_averaging": s.get("averaging")}}
    if s.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"checkpoint format {s.get('version')} is not {STATE_VERSION}; it was written "
            f"by another c2f-search version, start a new run"
        )
    if any("method" not in p for p in s["phases"]):  # written before phases named their method: one for all
        method = TrainConfig.from_dict(s["config"]).schedule.method
        s = {**s, "phases": [{"method": method, **p} for p in s["phases"]]}
    return s


def check_continues(s: dict, mine: dict, schedule, controller, cosine: bool) -> None:
    """Refuse a state that cannot continue this run of `schedule`: another identity, another method in a
    coarse phase (C = 1 trains the same by every method), or a history its controller does not accept."""
    for key in mine:
        if s["identity"][key] != mine[key]:
            raise CheckpointError(
                f"the checkpoint was trained with another {key}: {_first_difference(s['identity'][key], mine[key])}"
            )
    why = next(
        (
            f"its phase {k + 1} trained C={p['C']} by {p['method']}, this run trains C={p['C']} by "
            f"{schedule.method_at(p['C'])}"
            for k, p in enumerate(s["phases"])
            if 1 < p["C"] and p["C"] in schedule.Cs and p["method"] != schedule.method_at(p["C"])
        ),
        None,
    )
    why = why or controller.accepts(s["phases"], s["step"], cosine)
    if why is not None:
        raise CheckpointError(
            f"cannot continue {controller.describe()} from the checkpoint of {s['controller']['describe']}: {why}"
        )


def relabel(history: list[dict], controller, reached, step: int) -> None:
    """A forked history, labelled as this controller sees it; refused if it would have stopped earlier."""
    for k, r in enumerate(history):
        labels = controller.labels(r)
        if labels is None:
            return
        r.update(labels)
        r["target_reached"] = reached(r["val_metric"], r["C"])
        r["schedule_done"] = r["schedule_done"] or r["target_reached"]
        if r["schedule_done"] and k < len(history) - 1 and not history[k + 1]["averaged"]:
            raise CheckpointError(
                f"{controller.describe()} would have stopped at step {r['step']}, before the checkpoint's step {step}"
            )


def exploit(s: dict, mine: dict) -> dict:
    """Population-based training's copy of a better member: the donor's weights, optimizer state and
    history, continued under this member's own identity; only what shapes the model must agree."""
    for k in ("model", "model_kwargs"):
        if s["identity"]["config"][k] != mine["config"][k]:
            raise CheckpointError(
                f"the donor was trained with another {k}: "
                f"{_first_difference(s['identity']['config'][k], mine['config'][k])}"
            )
    return {**s, "identity": {**s["identity"], "config": mine["config"]}}


def _first_difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"{k} = {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
    return f"{a!r} in the checkpoint, {b!r} now"
