"""Learned schedules: the plateau and probe controllers, budgets and caps, and export as a fixed
schedule that re-runs standalone."""

import pytest

from c2f_search import Run, TrainConfig
from c2f_search.cli import main
from c2f_search.controllers import Probe, make_controller
from c2f_search.errors import ConfigError
from c2f_search.schedule import parse_schedule

KW = dict(model_kwargs={"depth": 1}, batch_size=8, lr=3e-4, warmup_steps=2)


def _cfg(schedule, **kw):
    return TrainConfig(schedule, **{**KW, **kw})


def _force_metrics(run, metrics):
    """Inject a validation-metric sequence: the evaluation still runs and costs, its metric is replaced."""
    it, real = iter(metrics), run.evaluator.evaluate

    def forced(model, split, C, method):
        _, loss = real(model, split, C, method)
        return next(it), loss

    run.evaluator.evaluate = forced


def test_plateau_ends_a_phase_after_patience_flat_evaluations(tiny_data):
    # 5 steps per epoch, evaluation every 2 steps (and at epoch ends)
    run = Run(
        _cfg("fshift:2xauto,1x1", transition="plateau:patience=2,delta=0.01,max=10", eval_every="2"), tiny_data, "cpu"
    )
    _force_metrics(run, [0.10, 0.20, 0.205, 0.209] + [0.5] * 10)
    recs = list(run.records())
    coarse = [r for r in recs if r["C"] == 2]
    # 0.10 -> 0.20 improves; 0.205 and 0.209 do not beat 0.20 by > 0.01: the second flat one ends the phase
    assert [r["step"] for r in coarse] == [2, 4, 5, 6] and coarse[-1]["phase_end"]
    assert coarse[-1]["reason"].startswith("plateau: 2 evaluations without an improvement over 0.2000")
    assert [p["C"] for p in run.phases] == [2, 1] and run.phases[0]["steps"] == 6
    assert recs[-1]["schedule_done"] and recs[-1]["trained"] == "fshift:2x1.2,1x1"


def test_max_length_and_budget_cap_an_auto_phase(tiny_data):
    run = Run(_cfg("avgpool:4xauto,2xauto,1x1", transition="plateau:patience=99,max=1"), tiny_data, "cpu")
    list(run.records())
    assert [(p["C"], p["steps"]) for p in run.phases] == [(4, 5), (2, 5), (1, 5)]
    assert run.phases[1]["reason"].startswith("max phase length (5 steps)")
    # a budget of 2 full-resolution epochs: the final 1-epoch phase keeps its share, the coarse ones get the rest
    run = Run(_cfg("avgpool:4xauto,1x1", transition="plateau:patience=99,max=10,budget=2"), tiny_data, "cpu")
    list(run.records())
    total, coarse, full = 2 * 5 * run.ledger.step_flops(1), run.ledger.step_flops(4), run.ledger.step_flops(1)
    n = run.phases[0]["steps"]
    assert run.phases[1]["C"] == 1 and run.phases[1]["steps"] == 5 and run.phases[1]["reason"].startswith("budget")
    assert n * coarse + 5 * full <= total < (n + 5) * coarse + 5 * full  # it stopped at the last interval that fits
    assert n >= 10 and run.counters["train_flops"] == pytest.approx(n * coarse + 5 * full)


class _ForceFinest(Probe):
    """A probe controller whose choice is forced: always the finest C it probed."""

    def choose(self, scores):
        self.seen_scores = dict(scores)
        return min(scores)


def test_probe_continues_from_the_winning_probes_state(tiny_data):
    sched = parse_schedule("maxpool:4xauto,2xauto,1x1")
    ctrl = _ForceFinest(sched, "probe:steps=3,max=4", steps=3, max_epochs=4)
    run = Run(_cfg(str(sched), transition="probe:steps=3,max=4"), tiny_data, "cpu", controller=ctrl)
    it = run.records()
    first = next(it)  # the first evaluation, at C=4
    assert first["C"] == 4 and first["step"] == 5
    snapshot = run.state_dict()
    probe = Run(
        run.cfg,
        tiny_data,
        "cpu",
        state=snapshot,
        controller=__import__("c2f_search.controllers", fromlist=["ProbeArm"]).ProbeArm(1, 5, 3, 1),
    )
    list(probe.records())  # what the forced winner (C=1) trains: the run that would have happened
    adopted = next(it)  # the main run's next record is the winner's evaluation, adopted
    assert set(ctrl.seen_scores) == {4, 2, 1}
    assert adopted["C"] == 1 and adopted["step"] == 8 and run.phases[-1]["C"] == 1
    assert run.phases[-1]["reason"].startswith("probe: C=1")
    mine, theirs = run.model.state_dict(), probe.model.state_dict()
    assert all((mine[k] == theirs[k]).all() for k in mine)
    assert adopted["val_metric"] == probe.history[-1]["val_metric"]
    # the two losing probes' FLOPs are in the run's cost, and named as the controller's
    arm_cost = probe.counters["train_flops"] - snapshot["counters"]["train_flops"]
    assert run.counters["controller_flops"] > 0
    assert run.counters["train_flops"] == pytest.approx(
        snapshot["counters"]["train_flops"]
        + arm_cost
        + run.counters["controller_flops"]
        - (run.counters["eval_flops"] - probe.counters["eval_flops"])
    )
    rest = list(it)
    assert rest[-1]["schedule_done"] and rest[-1]["trained"] == "maxpool:4x1,1x1" and run.phases[-1]["steps"] == 5


def test_learned_schedule_exports_and_reruns_standalone(tiny_data, tmp_path, capsys):
    import pyarrow.parquet as pq

    learned = Run(
        _cfg("fshift:2xauto,1x1", transition="plateau:patience=1,delta=0.5,max=3", eval_every="2"), tiny_data, "cpu"
    )
    recs = list(learned.records())
    trained = recs[-1]["trained"]
    assert trained == "fshift:2x0.8,1x1"  # ended after the first flat evaluation: 4 steps
    rerun = Run(_cfg(trained, eval_every="2"), tiny_data, "cpu")
    again = list(rerun.records())
    key = ("step", "C", "train_loss", "val_metric", "train_flops")
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in recs]
    rc = main(
        [
            "train",
            "--data",
            "builtin:events?train=40&val=20&seed=3",
            "--schedule",
            "fshift:2xauto,1x1",
            "--transition",
            "plateau:patience=1,delta=0.5,max=3",
            "--eval-every",
            "2",
            "--depth",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "3e-4",
            "--warmup-steps",
            "2",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0 and "learned schedule: fshift:2x0.8,1x1" in err and "C=2 -> C=1 after 4 steps: plateau" in err
    rows = pq.read_table(tmp_path / "r" / "metrics.parquet").to_pylist()
    assert rows[-1]["trained"] == trained and rows[-1]["controller"] == "plateau"


@pytest.mark.parametrize(
    "schedule, transition, words",
    [
        ("fshift:4xauto,1x2", None, "leaves phase lengths open"),
        ("fshift:4x1,1x2", "plateau", "fixes all of them"),
        ("fshift:4xauto,1x2", "plateu:patience=2", "choose plateau or probe"),
        ("fshift:4xauto,1x2", "plateau:patience=two", "patience='two' is not a valid value"),
        ("fshift:4xauto,1x2", "plateau:patients=2", "'patients=2' is not one of"),
        ("fshift:4xauto,1x2", "probe:score=money", "score flops or time"),
    ],
)
def test_transition_mistakes_name_the_flag(schedule, transition, words):
    with pytest.raises(ConfigError, match=words) as e:
        make_controller(parse_schedule(schedule), TrainConfig(schedule, transition=transition).transition)
    assert e.value.field == "transition"


@pytest.mark.parametrize(
    "text, methods",
    [
        ("avgpool:4xauto,2xauto,1x1", ["avgpool"] * 3),
        # lowering C from pooling's 4 to patchout's 2 switches the method
        ("avgpool:4xauto,tpatchout:2xauto,1x1", ["avgpool", "tpatchout", "tpatchout"]),
    ],
)
def test_population_member_copies_a_donor_lowers_C_and_keeps_its_own_lr(tiny_data, text, methods):
    from c2f_search.controllers import Population

    sched = parse_schedule(text)
    spec = "population"
    donor = Run(_cfg(str(sched), lr=1e-3), tiny_data, "cpu", controller=Population(sched, spec, C=4, budget=3))
    it = donor.records()
    next(it)
    state = donor.state_dict()
    from trainables.c2f import copy_member

    member = copy_member(
        Run(_cfg(str(sched), lr=2e-4, seed=7), tiny_data, "cpu", controller=Population(sched, spec, C=2, budget=3)),
        state,
    )
    assert member.C == 4 and member.step == donor.step
    assert member.opt.param_groups[0]["initial_lr"] == 2e-4
    with pytest.raises(Exception, match="lr"):  # without exploit, another lr is another run
        Run(_cfg(str(sched), lr=2e-4), tiny_data, "cpu", state=state, controller=Population(sched, spec, C=2, budget=3))
    recs = list(member.records())
    assert [p["C"] for p in member.phases] == [4, 2, 1] and [p["method"] for p in member.phases] == methods
    assert member.phases[1]["reason"].startswith("population: copied a better member, C lowered to 2")
    assert member.phases[2]["reason"].startswith("budget") and recs[-1]["schedule_done"]
    assert member.model.geometry.frames == 256 and member.phases[-1]["steps"] == 5
    assert member.counters["train_flops"] <= 3 * 5 * member.ledger.step_flops(1) + 1


def test_a_member_that_copies_twice_counts_its_own_work_once(tiny_data, tmp_path, monkeypatch):
    """Each copy adds what the member itself trained, never the share its previous donor's state brought."""
    from c2f_search.controllers import Population
    from trainables import c2f

    monkeypatch.setattr(c2f, "_ledger", lambda: tmp_path / "member.json")  # the trial folder, without Tune
    sched = parse_schedule("avgpool:2xauto,1x1")

    def member(seed, state=None):
        run = Run(
            _cfg(str(sched), lr=1e-3, seed=seed),
            tiny_data,
            "cpu",
            controller=Population(sched, "population", C=2, budget=3),
        )
        if state is None:
            return run, 0.0
        run = c2f.copy_member(run, state)
        return run, c2f._count_thrown_away(run)

    def train(run, inherited, steps):
        for rec in run.records():
            if rec["step"] >= steps:
                break
        c2f._record_member(run, inherited)
        return run.counters["train_flops"]

    donor, _ = member(1)
    donor_at = [train(donor, 0.0, 5)]
    state_1 = donor.state_dict()
    donor_at.append(train(donor, 0.0, 10))
    state_2 = donor.state_dict()
    me, inherited = member(2)
    own_1 = train(me, inherited, 5)  # all its own work
    me, inherited = member(2, state_1)
    assert inherited == donor_at[0] and me.counters["controller_flops"] == own_1
    after = train(me, inherited, 10)
    own_2 = after - donor_at[0] - own_1  # trained after the first copy
    me, inherited = member(2, state_2)
    assert me.counters["controller_flops"] == pytest.approx(own_1 + own_2)  # not the first donor's share too
    assert me.counters["train_flops"] == pytest.approx(donor_at[1] + own_1 + own_2)


@pytest.mark.slow
def test_pbt_member_lowers_C_mid_trial_and_loads_the_donor_onto_its_grid(tmp_path):
    """Real Ray PBT: two members; the worse one copies the better one and always moves to the next finer C."""
    import os

    import ray

    from c2f_search.analysis.rows import load_rows
    from c2f_search.search.runner import SearchSettings, run_search
    from c2f_search.settings import DataSettings

    space = tmp_path / "pbt.yaml"
    space.write_text(
        "epochs: 6\nspace:\n  method: [avgpool]\n  coarse_phases: {low: 1, high: 1}\n  C_values: [2]\n"
        "  final_fraction: {low: 0.5, high: 0.5}\n  controller: {plateau: {patience: [2]}}\n"
        "  lr: [1.0e-5, 1.0e-3]\npbt: {interval: 0.1, quantile: 0.5, lower_C: 1.0}\n"
        "fixed: {batch_size: 2, warmup_steps: 1, eval_every: 0.5epoch}\n"
    )
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.shutdown()
    # Ray starts the second member about a second after the first; at batch 8 and 3 epochs a member trained
    # in about a second, so the two often never overlapped. Now a member trains for several seconds (batch 2,
    # 6 epochs) and an interval shorter than a report's gap makes every report a perturbation point.
    st = SearchSettings(
        space=str(space),
        out=str(tmp_path / "o"),
        trials=2,
        scheduler="pbt",
        seed=1,
        data=DataSettings(
            "builtin:events?train=40&val=20&seed=3", None, None, "auto", False, None, None, None, None
        ).resolved(),
        model_kwargs={"depth": 1},
    )
    try:
        run_search(st)
    finally:
        ray.shutdown()
    rows = load_rows(tmp_path / "o").to_pylist()
    assert {r["controller"] for r in rows} == {"population"}
    assert all(r["status"] == "finished" for r in rows)
    import json

    exploits = [
        json.loads(line)
        for d in (tmp_path / "o" / "search").iterdir()
        if d.is_dir()
        for line in (d / "result.json").read_text().splitlines()
        if json.loads(line).get("exploited_from")
    ]
    assert exploits, "PBT never made a member copy another"
    # a copy's record carries the donor's counters plus the copying member's own work since its last copy; a
    # member that copies again before training has none to add, and result.json may have lost an earlier copy
    counted = [e for e in exploits if e["controller_flops"] > 0]
    assert counted, "no copy counted the copying member's own work as thrown away"
    first = counted[0]
    assert first["C"] == 1  # moved to the finer grid
    # by step, not FLOPs: a copy carries the donor's cost, so FLOPs need not grow with the member's own steps
    mine = sorted((r for r in rows if r["trial_id"] == first["trial_id"]), key=lambda r: r["step"])
    assert mine[0]["C"] == 2 and all(e["C"] == 1 for e in exploits)  # every copy moved to (or kept) C = 1
    assert all(r["trained"].startswith("avgpool:2x") and ",1x" in r["trained"] for r in mine if r["C"] == 1)
    # every member ends its schedule (a dropped lineage may have reported the same last step: pareto keeps the end)
    for tid in {r["trial_id"] for r in rows}:
        top = max(r["step"] for r in rows if r["trial_id"] == tid)
        assert [r["schedule_done"] for r in rows if r["trial_id"] == tid and r["step"] == top] == [True], tid
