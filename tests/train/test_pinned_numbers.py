"""Pinned numbers: a fixed-seed run of every model family and every phase controller gives exactly the
records pinned in ``pinned_numbers.json`` (committed with this test; first written before the phase loop was
split into its rooms, and unchanged by the package's restructure).

Changes since, each intended: ``ssast-pretrain``'s losses and metric were regenerated when SSAST's masks
moved to the device (drawn by torch ops from the run's stream instead of numpy; the same distribution,
other draws); its steps, phases and FLOPs are unchanged.

Regenerate only for an intended change of behaviour, and say which in the commit:
    python -m tests.train.test_pinned_numbers --write
"""

import json
import math
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("pinned_numbers.json")
DATA = "builtin:events?train=40&val=20&seed=3"  # conftest's TINY_DATA: 5 steps of 8 per epoch
TEST = "builtin:events?train=10&val=12&seed=5"  # another set's clips: a held-out test split
FIELDS = (
    "step",
    "C",
    "phase",
    "epoch",
    "train_loss",
    "val_loss",
    "val_metric",
    "train_flops",
    "eval_flops",
    "controller_flops",
    "phase_end",
    "schedule_done",
    "target_reached",
    "reason",
    "trained",
    "schedule",
    "controller",
    "averaged",
    "metric_name",
)
KW = dict(model_kwargs={"depth": 1}, batch_size=8, lr=3e-4, warmup_steps=2)

# name -> (TrainConfig kwargs, controller spec or None)
CASES = {
    "ast-fshift-augment": (dict(schedule="fshift:2x1,1x1", freqm=8, timem=32, mixup=0.5), None),
    "ast-avgpool-noise-balanced-bce-top2": (
        dict(
            schedule="avgpool:4x1,2x1,1x1",
            noise=True,
            balanced_sampling=True,
            loss="bce",
            weight_averaging="top:2",
            timem=16,
        ),
        None,
    ),
    "ast-patchpi-cosine-from1": (
        dict(schedule="patch-pi:2x1,1x2", lr_schedule="cosine", weight_averaging="from:1"),
        None,
    ),
    "ast-patchbl-evalevery": (dict(schedule="patch-bl:2x1,1x1", eval_every="2", lr_milestones=(1,)), None),
    "ast-maxpool-target": (dict(schedule="maxpool:2x1,1x2", metric_target=0.0), None),
    "ast-none": (dict(schedule="none:1x2", mixup=1.0), None),
    "htsat-fshift": (dict(schedule="fshift:2x1,1x1", model="htsat-tiny", freqm=4, timem=16), None),
    "cnn14-avgpool": (dict(schedule="avgpool:2x1,1x1", model="cnn14-tiny", model_kwargs={}, lr=1e-3), None),
    "ssast-maxpool-supervised": (dict(schedule="maxpool:2x1,1x1", model="ssast-tiny"), None),
    "ssast-pretrain": (
        dict(schedule="fshift:2x1,1x1", model="ssast-tiny", objective="masked-patch", mask_patches=20),
        None,
    ),
    "plateau": (dict(schedule="fshift:2xauto,1x1", transition="plateau:patience=1,max=2", eval_every="2"), None),
    "probe": (dict(schedule="maxpool:4xauto,2xauto,1x1", transition="probe:steps=2,max=2", eval_every="3"), None),
    "population": (dict(schedule="avgpool:4xauto,2xauto,1x1"), "population"),
}


def _data():
    from c2f_search.data import builtin_events as builtin
    from c2f_search.data.sets import Data

    return Data.from_specs(DATA, test=str(builtin.materialize(TEST) / "val.json"))


def _round(v):
    return float(f"{v:.9g}") if isinstance(v, float) and math.isfinite(v) else v


def run_case(name: str, data) -> dict:
    from c2f_search import Run, TrainConfig
    from c2f_search.controllers import Population
    from c2f_search.train.evaluator import evaluate_state

    kw, ctrl = CASES[name]
    cfg = TrainConfig(**{**KW, **kw})
    controller = None
    if ctrl == "population":  # a PBT member whose C is lowered from 4 to 2 after its first evaluation
        controller = Population(cfg.schedule, "population", C=4, budget=3)
    run = Run(cfg, data, "cpu", controller=controller)
    records, state = [], None
    for rec in run.records():
        records.append({k: _round(rec[k]) for k in FIELDS})
        if not rec["averaged"]:
            state = run.state_dict()
        if controller is not None and len(records) == 1:
            controller.C = 2
    out = {"records": records, "phases": [[p["C"], p["steps"], p["reason"]] for p in run.phases]}
    if (
        cfg.objective == "supervised" and controller is None
    ):  # the --test report: the final state scored on the held-out split
        out["test_metric"] = _round(evaluate_state(state, data, "test"))
    return out


@pytest.fixture(scope="module")
def golden_data(_cache):
    return _data()


def _rel(name: str) -> float:
    """Float tolerance. Steps, phases, FLOPs and reasons are compared exactly. Losses and metrics depend on the
    CPU's kernels: on an AVX-512 machine (the file was written on another) the AST cases still agree within
    1e-6, SSAST's losses within 1e-5, and CNN14's, whose convolutions sum in another order and whose BatchNorm
    carries the difference on, within 1.8%."""
    return 5e-2 if name.startswith("cnn14") else 1e-4


@pytest.mark.parametrize("name", sorted(CASES))
def test_pinned_run(name, golden_data):
    expected = json.loads(GOLDEN.read_text())[name]
    got = json.loads(json.dumps(run_case(name, golden_data)))
    assert [r["step"] for r in got["records"]] == [r["step"] for r in expected["records"]]
    for mine, theirs in zip(got["records"], expected["records"]):
        for k in FIELDS:
            a, b = mine[k], theirs[k]
            if isinstance(b, float):
                assert a == pytest.approx(b, rel=_rel(name), abs=1e-9, nan_ok=True), (name, mine["step"], k)
            else:
                assert a == b, (name, mine["step"], k)
    assert got["phases"] == expected["phases"]
    if "test_metric" in expected:
        assert got["test_metric"] == pytest.approx(expected["test_metric"], rel=1e-6)


if __name__ == "__main__" and "--write" in sys.argv:
    import os
    import tempfile

    os.environ.setdefault("C2F_CACHE", tempfile.mkdtemp(prefix="c2f-golden-"))
    d = _data()
    GOLDEN.write_text(json.dumps({n: run_case(n, d) for n in sorted(CASES)}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
