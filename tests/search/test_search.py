"""Real Ray, real Optuna (SQLite), real Parquet: searches at a tiny scale."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from c2f_search.analysis.rows import load_rows
from c2f_search.search.space import load_space

from ..conftest import TINY_DATA, grid_space, kill_ray_session_of, run_cli

pytestmark = pytest.mark.slow
SCHED = "avgpool:2x1,1x1"

# 80 clips: 5 steps per epoch at the spaces' batch of 16, so that every phase is at least one step
TINY_DATA_80 = TINY_DATA.replace("train=40", "train=80")


@pytest.mark.slow
def test_trial_crash_resumes_from_checkpoint_with_identical_metrics(tmp_path, fresh_ray, monkeypatch):
    from c2f_search import Run, TrainConfig
    from c2f_search.search.runner import SearchSettings, run_search
    from c2f_search.settings import DataSettings

    marker = tmp_path / "fault"
    monkeypatch.setenv("C2F_INJECT_FAULT", f"{marker}:1")  # crash once, after epoch 1 (a phase transition)
    data_args = DataSettings(TINY_DATA, None, None, "auto", False, None, str(tmp_path / "cache"), None, None).resolved()
    st = SearchSettings(
        space=str(grid_space(tmp_path, [SCHED])),
        out=str(tmp_path / "s"),
        data=data_args,
        trials=1,
        max_failures=2,
        model_kwargs={"depth": 1},
        keep_checkpoints=None,
    )
    results = run_search(st)
    assert marker.exists(), "the fault was not injected"
    assert not results.errors
    rows = load_rows(tmp_path / "s").to_pylist()
    # the uninterrupted reference: the bare core, no Ray
    data = replace(data_args, norm=st.data.norm).load()
    ref = list(
        Run(TrainConfig(SCHED, model_kwargs={"depth": 1}, lr=3e-4, batch_size=8, warmup_steps=2), data, "cpu").records()
    )
    assert [(r["step"], r["C"], r["val_metric"], r["train_flops"]) for r in rows] == [
        (r["step"], r["C"], r["val_metric"], r["train_flops"]) for r in ref
    ]
    assert all(r["checkpoint_path"] for r in rows)
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{tmp_path / 's' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


@pytest.mark.slow
def test_killed_driver_resumes_without_losing_or_duplicating_trials(tmp_path, fresh_ray):
    space = grid_space(tmp_path, ["none:1x2", SCHED, "fshift:2x1,1x1", "maxpool:2x1,1x1"])
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "c2f_search.cli",
        "search",
        "--space",
        str(space),
        "--data",
        TINY_DATA,
        "--trials",
        "4",
        "--depth",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_path / "driver.log", "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    db = out / "optuna.db"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once one trial is finished and others are not
        time.sleep(1)
        if db.exists():
            try:
                st = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{db}")
                done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
            except Exception:
                continue
            if 1 <= len(done) < 4:
                break
    assert p.poll() is None, "the search ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    log.close()
    kill_ray_session_of(p.pid)
    r = run_cli(["search", "--out", str(out), "--resume"], tmp_path / "resume.log", env, 400)
    assert r.returncode == 0, r.stdout[-3000:]
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    rows = load_rows(out).to_pylist()
    finished = {x["trial_id"]: x["schedule"] for x in rows if x["schedule_done"]}
    assert sorted(finished.values()) == sorted(["none:1x2", SCHED, "fshift:2x1,1x1", "maxpool:2x1,1x1"])
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trained = [t for t in complete if "repeat_of" not in t.user_attrs]  # a repeat is told, not trained
    assert len({t.params["schedule"] for t in trained}) == len(trained)  # no schedule trained twice
    assert sorted(t.params["schedule"] for t in trained) == sorted(finished.values())  # study agrees with Tune
    by_number = {t.number: t for t in study.trials}
    for t in complete:
        if "repeat_of" in t.user_attrs:
            assert t.values == by_number[t.user_attrs["repeat_of"]].values
    front = pq.read_table(out / "front.parquet").to_pylist()
    assert front and (out / "front.png").stat().st_size > 10_000


def test_unfinished_schedules_are_pruned_not_complete(tmp_path):
    from c2f_search.search.searcher import C2FOptunaSearch

    sp = load_space("paper")
    s = C2FOptunaSearch(
        space=sp.define_by_run(4),
        metric=["val_metric", "train_flops"],
        mode=["max", "min"],
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"),
        study_name="t",
        seed=0,
    )
    for tid in ("a", "b", "c"):
        assert "schedule" in s.suggest(tid)
    s.on_trial_complete("a", {"val_metric": 0.9, "train_flops": 1.0, "schedule_done": False})  # ASHA stopped it
    s.on_trial_complete("b", {"val_metric": 0.5, "train_flops": 2.0, "schedule_done": True})
    s.on_trial_complete("c", None, error=True)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'o.db'}")
    S = optuna.trial.TrialState
    assert [t.state for t in study.trials] == [S.PRUNED, S.COMPLETE, S.FAIL]
    assert [t.values for t in study.best_trials] == [[0.5, 2.0]]


@pytest.mark.slow
def test_paper_grid_with_asha_at_tiny_scale(tmp_path, fresh_ray):
    out = tmp_path / "paper"
    r = run_cli(
        [
            "search",
            "--space",
            "paper",
            "--data",
            TINY_DATA_80,
            "--epochs",
            "1",
            "--depth",
            "1",
            "--scheduler",
            "asha",
            "--out",
            str(out),
        ],
        tmp_path / "paper.log",
        {**os.environ, "RAY_AUTH_MODE": "disabled"},
        600,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{out / 'optuna.db'}")
    S = optuna.trial.TrialState
    assert len(study.trials) == 16 and {t.state for t in study.trials} <= {S.COMPLETE, S.PRUNED}
    rows = load_rows(out).to_pylist()
    status = {x["schedule"]: x["status"] for x in rows}
    assert len(status) == 16
    for t in study.trials:  # Optuna and the exported table agree on what finished
        assert (t.state == S.COMPLETE) == (status[t.params["schedule"]] == "finished")
    assert "trials: " in r.stdout and (out / "front.png").exists()


def test_open_space_runs_the_baseline_first():
    from c2f_search.search.searcher import make_searcher

    sp = load_space("default")
    s = make_searcher(sp, "auto", 0, 4, None)
    first, second = s.suggest("a"), s.suggest("b")
    assert first["schedule"] == "none:1x4" and second["schedule"] != "none:1x4"


@pytest.mark.slow
def test_repeated_configurations_are_not_trained_again(tmp_path, fresh_ray):
    """Two configurations and four trials: the sampler must repeat, and no repeat is trained."""
    out = tmp_path / "s"
    r = run_cli(
        [
            "search",
            "--space",
            str(grid_space(tmp_path, ["none:1x1", "avgpool:2x0.5,1x0.5"])),
            "--data",
            TINY_DATA,
            "--sampler",
            "random",
            "--trials",
            "4",
            "--epochs",
            "1",
            "--depth",
            "1",
            "--out",
            str(out),
        ],
        tmp_path / "log",
        {**os.environ, "RAY_AUTH_MODE": "disabled"},
        400,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    rows = load_rows(out).to_pylist()
    trained = {x["trial_id"]: x["schedule"] for x in rows}
    assert sorted(trained.values()) == ["avgpool:2x0.5,1x0.5", "none:1x1"]  # each once
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{out / 'optuna.db'}")
    first = {t.number: t for t in study.trials if "repeat_of" not in t.user_attrs}
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert len(first) == 2 and repeats, "the sampler never repeated"
    for t in repeats:  # told the first one's result
        assert t.state == optuna.trial.TrialState.COMPLETE and t.values == first[t.user_attrs["repeat_of"]].values
        assert t.params["schedule"] == first[t.user_attrs["repeat_of"]].params["schedule"]
    assert "the space holds only 2 distinct configurations" in r.stdout
    assert f"{len(repeats)} sampled configurations repeated" in (out / "summary.txt").read_text()


def test_a_repeat_of_a_running_trial_waits_for_its_result(tmp_path, monkeypatch):
    from c2f_search.search import searcher
    from c2f_search.search.searcher import make_searcher

    monkeypatch.setattr(searcher, "MAX_REPEATS", 5)  # every sample repeats here; fewer SQLite round trips
    sp = load_space(str(grid_space(tmp_path, ["none:1x1"])))
    s = make_searcher(sp, "tpe", 0, 1, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"))
    assert s.suggest("a")["schedule"] == "none:1x1"
    assert s.suggest("b") == s.FINISHED and s.exhausted  # every sample repeats "a", which still runs
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{tmp_path / 'o.db'}")
    S = optuna.trial.TrialState
    assert {t.state for t in study.trials[1:]} == {S.RUNNING}
    s.on_trial_complete("a", {"val_metric": 0.5, "train_flops": 2.0, "schedule_done": True})
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert all(t.state == S.COMPLETE and t.values == [0.5, 2.0] for t in study.trials)


@pytest.mark.slow
def test_a_search_over_two_model_families(tmp_path, fresh_ray):
    space = tmp_path / "models.yaml"
    space.write_text(
        "epochs: 2\nmodel: [ast-tiny, htsat-tiny]\nschedules: ['fshift:2x1,1x1']\n"
        "fixed: {lr: 3.0e-4, batch_size: 8, warmup_steps: 2}\n"
    )
    out = tmp_path / "s"
    r = run_cli(
        ["search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--out", str(out)],
        tmp_path / "models.log",
        {**os.environ, "RAY_AUTH_MODE": "disabled"},
        600,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    rows = load_rows(out).to_pylist()
    assert {(x["model"], x["C"]) for x in rows} == {(m, C) for m in ("ast-tiny", "htsat-tiny") for C in (2, 1)}
    assert {x["status"] for x in rows} == {"finished"}
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sorted(t.params["model"] for t in study.trials) == ["ast-tiny", "htsat-tiny"]
    assert "htsat-tiny fshift:2x1,1x1" in r.stdout or "ast-tiny fshift:2x1,1x1" in r.stdout  # the front names models


@pytest.mark.slow
def test_a_pretraining_search_is_scored_by_its_fine_tune(tmp_path, fresh_ray):
    from c2f_search.search.runner import SearchSettings, run_search
    from c2f_search.settings import DataSettings

    space = tmp_path / "pre.yaml"
    space.write_text(
        "epochs: 2\nmodel: ssast-tiny\nobjective: masked-patch\nschedules: ['fshift:2x1,1x1']\n"
        "fixed: {lr: 1.0e-3, batch_size: 8, warmup_steps: 0}\n"
        f"finetune: {{data: '{TINY_DATA}', schedule: 'none:1x1', fixed: {{batch_size: 8}}}}\n"
    )
    cache = str(tmp_path / "cache")
    data = DataSettings(TINY_DATA, None, None, "auto", False, None, cache, None, None).resolved()
    st = SearchSettings(
        space=str(space),
        out=str(tmp_path / "s"),
        data=replace(data, labelled=False),
        trials=1,
        model_kwargs={"depth": 1},
        finetune={
            "data": DataSettings(TINY_DATA, None, None, "auto", False, None, cache, None, None).resolved(),
            "schedule": "none:1x1",
            "fixed": {"batch_size": 8},
        },
    )
    run_search(st)
    rows = load_rows(tmp_path / "s").to_pylist()
    assert [(x["C"], x["metric_name"], x["schedule_done"]) for x in rows] == [
        (2, "masked_patch_accuracy", False),
        (1, "masked_patch_accuracy", False),
        (1, "accuracy", True),
    ]
    assert rows[2]["train_flops"] == rows[1]["train_flops"]  # the pretraining's FLOPs
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{tmp_path / 's' / 'optuna.db'}")
    assert [t.values for t in study.trials] == [[rows[2]["val_metric"], rows[2]["train_flops"]]]


def test_the_private_ray_state_this_module_uses_is_still_there():
    """searcher.py's reads of Ray's private state (RAY_PRIVATE, optuna_state): fails if Ray moves one."""
    import ast

    from c2f_search.search import searcher as mod

    searcher = mod.make_searcher(load_space("default"), "random", 0, 4, None)
    config = searcher.suggest("trial-a")
    trials, study = mod.optuna_state(searcher)
    assert isinstance(config, dict) and "schedule" in config
    assert isinstance(study, optuna.Study) and list(trials) == ["trial-a"]
    assert trials["trial-a"].number == study.trials[0].number
    generator = mod.C2FSearchGenerator(searcher)
    for cls, names in mod.RAY_PRIVATE.items():
        obj = searcher if cls is mod.OptunaSearch else generator
        assert all(hasattr(obj, n) for n in names), (cls, [n for n in names if not hasattr(obj, n)])
    # and every private Ray attribute the module reads is listed
    ours = {n for names in mod.RAY_PRIVATE.values() for n in names}
    tree = ast.parse(Path(mod.__file__).read_text())
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
        and isinstance(n.value, ast.Name)
        and n.value.id in ("self", "search")
    }
    own = {"_first", "_key", "_outcome", "_waiting", "_tell", "_imported"}  # this module's own
    assert used - own <= ours, used - own - ours


@pytest.mark.slow
def test_a_search_over_the_patchout_space_names_its_methods(tmp_path, fresh_ray):
    """The shipped patchout.yaml on built-in data: patchout alone and mixed schedules train in real Ray, and
    the summary and the front tell their methods apart."""
    out = tmp_path / "p"
    r = run_cli(
        [
            "search",
            "--space",
            "patchout",
            "--data",
            TINY_DATA_80,
            "--sampler",
            "random",
            "--scheduler",
            "fifo",  # every trial to its end: its methods' rows are compared whole
            "--seed",
            "0",
            "--trials",
            "5",
            "--epochs",
            "2",
            "--depth",
            "1",
            "--out",
            str(out),
        ],
        tmp_path / "p.log",
        {**os.environ, "RAY_AUTH_MODE": "disabled"},
        900,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    rows = load_rows(out).to_pylist()
    assert {x["status"] for x in rows} == {"finished"}
    labels = {x["method"] for x in rows}
    # seed 0 draws the baseline, avgpool, two avgpool-and-patchout mixes and fpatchout (tests/search/test_space.py
    # samples the space itself); each row's label is its schedule's methods
    assert labels & {"tpatchout", "fpatchout", "patchout"} and any("+" in m for m in labels)
    for x in rows:
        assert x["method"] == "+".join(dict.fromkeys(p.split(":")[0] for p in x["schedule"].split(",") if ":" in p))
    summary = (out / "summary.txt").read_text()
    assert all(x["schedule"] in summary for x in rows if x["schedule_done"])  # Table 2/3 names each schedule
    anytime = summary.split("anytime front")[1].splitlines()[1:]
    assert any(ln.endswith("  full model") for ln in anytime) and (out / "front.png").stat().st_size > 0


def test_a_trial_lost_with_a_killed_driver_is_trained_next_on_resume(tmp_path):
    """The study holds a trial as RUNNING that Tune never saved (the driver was killed right after asking for
    it): a resume fails it and queues its parameters, so the next trial trains that grid entry, not a repeat."""
    from c2f_search.search.searcher import make_searcher, optuna_state

    s = make_searcher(load_space(str(grid_space(tmp_path, ["none:1x2", "avgpool:2x1,1x1"]))), "auto", 0, 2, None)
    first, lost = s.suggest("a"), s.suggest("b")
    trials, study = optuna_state(s)
    # fault injection: the searcher as Tune saved it, before it handed out trial b
    del trials["b"]
    s._first.pop(s._key.pop("b"))
    assert s.requeue_lost() == 1 and s.requeue_lost() == 0
    assert s.suggest("c")["schedule"] == lost["schedule"] != first["schedule"]
    assert [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]
