"""MOASHA's rung decisions on hand-made rung tables (no Ray), and the planned FLOPs it ranks by."""

import os
import random
from types import SimpleNamespace

import pytest

from c2f_search.analysis.pareto import crowding_distance, front_ranks
from c2f_search.search.schedulers import MOASHA, PLANNED, keeps


def test_front_ranks_peel_fronts_and_equal_points_share_a_rank():
    pts = [(0.8, 10), (0.7, 5), (0.6, 8), (0.5, 12), (0.7, 5), (float("nan"), 1)]
    assert front_ranks(pts) == [0, 0, 1, 2, 0, 3]


def test_crowding_distance_gives_the_ends_infinity():
    d = crowding_distance([(0.5, 1), (0.6, 2), (0.9, 10)])
    assert d[0] == d[2] == float("inf") and 0 < d[1] < float("inf")
    assert crowding_distance([]) == []


# rung tables: trial -> (metric at the rung, planned total training FLOPs)
COSTLY, CHEAP = ("costly", (0.80, 10.0)), ("cheap", (0.70, 5.0))


def test_a_dominated_trial_stops():
    rung = dict([COSTLY, CHEAP, ("worse", (0.60, 8.0)), ("worst", (0.50, 12.0))])
    assert not keeps(rung, "worse", eta=2)  # 0.60 at 8 is dominated by 0.70 at 5
    assert not keeps(rung, "worst", eta=2)


def test_a_cheap_non_dominated_trial_goes_on_below_the_median_metric():
    """ASHA would stop 'cheap' (its metric is in the bottom half here); on the front it goes on."""
    rung = dict([("a", (0.90, 10.0)), ("b", (0.85, 10.0)), ("c", (0.80, 10.0)), CHEAP])
    assert keeps(rung, "cheap", eta=2)
    assert not keeps(rung, "c", eta=2)


def test_ties_in_a_rank_go_to_the_ends_of_the_front_by_crowding():
    rung = {"f1": (0.75, 5.0), "f2": (0.9, 10.0), "lo": (0.6, 6.0), "mid": (0.65, 7.0), "hi": (0.7, 11.0)}
    assert front_ranks(list(rung.values())) == [0, 0, 1, 1, 1]
    assert not keeps(rung, "mid", eta=2)  # ceil(5/2) = 3 go on: the front, then an end of rank 1 (infinite crowding)
    assert keeps(rung, "lo", eta=2)


def test_never_stops_a_trial_on_its_rungs_front():
    rng = random.Random(0)
    stopped = 0
    for _ in range(300):
        rung = {}
        for k in range(rng.randint(1, 12)):
            rung[str(k)] = (rng.random(), rng.choice([1.0, 2.0, 3.0, 4.0]))
            me = str(k)
            on_front = front_ranks(list(rung.values()))[list(rung).index(me)] == 0
            if on_front:
                assert keeps(rung, me, eta=2)
            stopped += not keeps(rung, me, eta=2)
    assert stopped > 0


def _trial(tid):
    return SimpleNamespace(trial_id=tid)


def test_moasha_decides_once_per_rung_at_cumulative_flops():
    s = MOASHA(max_t=100.0, grace_period=25.0)
    assert s.rungs == [25.0, 50.0]

    def report(tid, flops, metric, planned):
        return s.on_trial_result(None, _trial(tid), {"train_flops": flops, "val_metric": metric, PLANNED: planned})

    assert report("costly", 10, 0.1, 100.0) == "CONTINUE"  # below the first rung
    assert report("costly", 30, 0.8, 100.0) == "CONTINUE"  # alone at rung 25
    assert report("cheap", 26, 0.7, 40.0) == "CONTINUE"  # below 'costly', but cheaper: on the front
    assert report("dominated", 27, 0.6, 60.0) == "STOP"  # 'cheap' is better and cheaper
    assert report("costly", 40, 0.1, 100.0) == "CONTINUE"  # rung 25 is decided; rung 50 not reached
    assert report("late", 60, 0.9, 90.0) == "CONTINUE"  # past both rungs at once: recorded at 50 only
    assert "late" not in s.tables[25.0] and s.stopped == ["dominated"]
    assert s.on_trial_result(None, _trial("x"), {"train_flops": 30}) == "CONTINUE"  # no planned FLOPs: no rung


def test_moasha_never_stops_the_baseline_every_saving_is_measured_against():
    s = MOASHA(max_t=100.0, grace_period=25.0)

    def report(tid, schedule, metric, planned):
        result = {"train_flops": 30, "val_metric": metric, PLANNED: planned, "schedule": schedule}
        return s.on_trial_result(None, _trial(tid), result)

    assert report("cheap", "fshift:4x2,1x3", 0.8, 40.0) == "CONTINUE"
    assert report("dominated", "avgpool:2x2,1x3", 0.5, 60.0) == "STOP"
    assert report("baseline", "none:1x5", 0.5, 100.0) == "CONTINUE"  # dominated too, and kept
    assert s.tables[25.0]["baseline"] == (0.5, 100.0) and s.stopped == ["dominated"]


LEARNED = ("fshift:2xauto,1x1", "plateau:patience=1,budget=2")


@pytest.mark.parametrize("schedule,transition", [("fshift:2x1,1x1", None), ("avgpool:2x0.5,1x1.5", None), LEARNED])
def test_planned_flops_are_what_a_fixed_run_trains_and_bound_a_learned_one(tiny_data, schedule, transition):
    from c2f_search.train.run import Run

    from ..conftest import tiny_config

    run = Run(tiny_config(schedule, transition=transition), tiny_data, "cpu")
    planned = run.ledger.planned_train_flops(run.controller)
    run.fit()
    spent = run.counters["train_flops"]
    assert (planned >= spent) if transition else (planned == spent)


def test_moasha_with_a_grid_space_is_refused_in_one_line(capsys):
    from ..cli.helpers import cli
    from ..conftest import TINY_DATA

    rc, err = cli(["search", "--space", "paper", "--data", TINY_DATA, "--scheduler", "moasha"], capsys)
    assert rc == 2 and len(err) == 1 and "--scheduler moasha: " in err[0] and "is a grid" in err[0], err


def _rung_entries(reports: list[dict], rungs: list[float]) -> dict:
    """rung -> (metric, planned FLOPs) a trial's reports put there, in the order they did, by MOASHA's rule:
    each report at the highest rung it reached that holds nothing of the trial yet."""
    out = {}
    for r in reports:
        for rung in reversed(rungs):
            if r["train_flops"] >= rung and rung not in out:
                out[rung] = (r["val_metric"], r[PLANNED])
                break
    return out


@pytest.mark.slow
def test_a_tiny_moasha_search_stops_only_dominated_trials(tmp_path, fresh_ray):
    import json

    from ..cli.helpers import ENV
    from ..conftest import TINY_DATA, run_cli

    out = tmp_path / "s"
    data = TINY_DATA.replace("train=40", "train=160")  # the demo space's batch of 16: 10 steps per epoch
    args = ["search", "--space", "demo", "--data", data, "--epochs", "2", "--depth", "1", "--trials", "10"]
    # one trial at a time: the order trials reach a rung, and so every decision, is the same on every run; TPE,
    # whose ten trials here include dominated ones (the GP's ten all stayed on their rungs' fronts)
    one = ["--cpus-per-trial", str(len(os.sched_getaffinity(0))), "--sampler", "tpe"]
    r = run_cli([*args, *one, "--scheduler", "moasha", "--out", str(out)], tmp_path / "s.log", ENV, 900)
    assert r.returncode == 0, r.stdout[-3000:]
    trials = {}
    for d in (out / "search").iterdir():
        if (d / "result.json").exists():
            reports = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
            trials[reports[0]["trial_id"]] = reports
    max_t = max(t[0][PLANNED] for t in trials.values() if t[0]["schedule"].startswith("none:"))
    rungs = [max_t / 4, max_t / 2]
    entries = {tid: _rung_entries(reports, rungs) for tid, reports in trials.items()}
    stopped = [tid for tid, reports in trials.items() if not reports[-1]["schedule_done"]]
    assert stopped, "no trial stopped: MOASHA had nothing to do"
    for tid in stopped:
        rung = list(entries[tid])[-1]  # its last report stopped it, at the rung that report was recorded at
        m, f = entries[tid][rung]
        rivals = [e[rung] for other, e in entries.items() if other != tid and rung in e]
        assert any(rm >= m and rf <= f and (rm > m or rf < f) for rm, rf in rivals), (tid, rung, entries)


@pytest.mark.slow
def test_the_gp_sampler_sees_every_schedule_parameter_in_every_trial_and_moves_on():
    """GPSampler models the parameters all trials share: the baseline alone would leave it one (the number of
    phases), and it then asks for the baseline again and again (each a repeat, not trained; the search ends
    when 200 samples in a row repeat). With every parameter set in every trial it keeps finding new ones."""
    import hashlib

    import optuna

    from c2f_search.search.searcher import make_sampler
    from c2f_search.search.space import load_space

    def values(schedule: str) -> list[float]:  # a deterministic outcome per schedule, as repeats are told
        h, base = int(hashlib.md5(schedule.encode()).hexdigest(), 16), schedule.startswith("none")
        return [0.5 + (h % 1000) / 4000 + 0.1 * base, 5.0 if base else 2 + h % 7 / 3]

    space = load_space("demo")
    longest = {}
    for flat in (True, False):
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler("gp", space, 0, 5))
        study.enqueue_trial({"coarse_phases": 0})
        seen, run, longest[flat] = set(), 0, 0
        for _ in range(24):
            t = study.ask()
            schedule = space.define_by_run(5, flat=flat)(t)["schedule"]
            study.tell(t, values(schedule))
            run = run + 1 if schedule in seen else 0
            longest[flat] = max(longest[flat], run)
            seen.add(schedule)
        if flat:
            assert len({tuple(sorted(t.params)) for t in study.trials}) == 1 and len(seen) >= 16, len(seen)
    assert longest[True] <= 3 and longest[False] >= 10, longest


@pytest.mark.parametrize(
    "space, sampler, scheduler",
    [("demo", "gp", "moasha"), ("default", "gp", "moasha"), ("paper", "grid", "fifo"), ("pretrain", "gp", "fifo")],
)
def test_the_defaults_resolve_by_space_and_are_recorded_resolved(tmp_path, space, sampler, scheduler):
    """auto: MOASHA and the GP for an open space (bench/search_quality.py's best), a grid run whole, a pretraining
    space (its metric comes after its fine-tune) to its end; search.json records what auto resolved to."""
    from c2f_search.cli.search import search_settings
    from c2f_search.settings import SearchSettings

    from ..conftest import TINY_DATA

    s = search_settings({"space": space, "data": TINY_DATA}, tmp_path)
    assert (s.sampler, s.scheduler) == (sampler, scheduler)
    s.save()
    assert (SearchSettings.load(tmp_path).sampler, SearchSettings.load(tmp_path).scheduler) == (sampler, scheduler)
    assert search_settings({"space": space, "data": TINY_DATA, "scheduler": "asha"}, tmp_path).scheduler == "asha"
