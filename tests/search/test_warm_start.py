"""--warm-start: the parameter check and the lock without Ray; the two cases, a moved folder and a resume with
Ray on tiny searches (slow)."""

import json
import os
import shutil
import subprocess
import sys

import optuna
import pytest

from c2f_search.analysis.pareto import pareto_front
from c2f_search.errors import C2FError, SpaceError
from c2f_search.files import folder_lock, reading_lock
from c2f_search.search.space import load_space
from c2f_search.search.warm_start import _replay

from ..cli.helpers import ENV, cli
from ..conftest import TINY_DATA, run_cli


def _a_trial(space, epochs, params):
    """A finished trial of `space` with `params`, as an earlier search's study holds it."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(params)
    t = study.ask()
    space.define_by_run(epochs)(t)
    study.tell(t, [0.5, 1.0])
    return study.trials[0]


def test_a_trial_of_the_same_space_replays_to_its_configuration():
    demo = load_space("demo")
    t = _a_trial(demo, 5, {"coarse_phases": 1, "method": "avgpool", "C_1": "4", "fraction_1": 0.2})
    assert _replay(demo, 5, t, True, "--warm-start x")["schedule"] == "avgpool:4x1,1x4"


def test_a_parameter_the_new_space_does_not_ask_for_in_that_form_is_refused(tmp_path):
    demo = load_space("demo")
    t = _a_trial(demo, 5, {"coarse_phases": 1, "method": "maxpool", "C_1": "4", "fraction_1": 0.2})
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(
        open(demo.path).read().replace("method: [fshift, avgpool, maxpool, patch-pi]", "method: [fshift, avgpool]")
    )
    with pytest.raises(SpaceError, match=r"--warm-start x: its trial 0 sets 'method' = 'maxpool'"):
        _replay(load_space(str(narrow)), 5, t, False, "--warm-start x")
    t = _a_trial(demo, 5, {"coarse_phases": 1, "method": "avgpool", "C_1": "4", "fraction_1": 0.2})
    with pytest.raises(SpaceError, match=r"'method' = 'avgpool' \(CategoricalDistribution"):
        _replay(load_space(str(narrow)), 5, t, True, "--warm-start x")  # the same value, another distribution
    _replay(load_space(str(narrow)), 5, t, False, "--warm-start x")  # enqueued: the value is what counts


def test_reading_a_folder_honours_its_lock(tmp_path):
    lock = tmp_path / "s" / ".c2f-search.lock"
    with reading_lock(lock, "--warm-start s"):  # no lock file: nothing holds it
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from c2f_search.files import folder_lock\nimport time\n"
         f"with folder_lock({str(lock)!r}, 'x', 'search'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(C2FError, match=rf"--warm-start s: in use by c2f-search search \(pid {holder.pid}"):
            with reading_lock(lock, "--warm-start s"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(lock, "x", "search"):  # this process's own lock does not block its own reading
        with reading_lock(lock, "--warm-start s"):
            pass


def test_a_folder_that_is_not_a_search_is_one_line(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    rc, err = cli(["search", "--space", "demo", "--data", TINY_DATA, "--warm-start", str(tmp_path / "plain"),
                   "--out", str(tmp_path / "s")], capsys)  # fmt: skip
    plain = tmp_path / "plain"
    assert rc == 2 and err == [
        f"c2f-search search: error: --warm-start {plain}: not the folder of a search (no search.json); give the "
        "--out DIR of a search"
    ], err


def _study(out):
    return optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{out / 'optuna.db'}")


def _trial_folders(out):
    return [p for p in (out / "search").iterdir() if p.is_dir() and (p / "result.json").exists()]


DATA = TINY_DATA.replace("train=40", "train=160")  # the demo space's batch of 16: 10 steps per epoch
TINY_SEARCH = ["search", "--space", "demo", "--data", DATA, "--epochs", "1", "--depth", "1"]


@pytest.mark.slow
def test_warm_start_imports_the_same_setting_once_and_enqueues_another_setting(tmp_path, fresh_ray):
    import pyarrow.parquet as pq

    a = tmp_path / "a"
    r = run_cli([*TINY_SEARCH, "--trials", "3", "--out", str(a)], tmp_path / "a.log", ENV, 600)
    assert r.returncode == 0, r.stdout[-3000:]
    moved = tmp_path / "moved"
    shutil.move(a, moved)  # read where it is now
    earlier = [t for t in _study(moved).trials if t.state == optuna.trial.TrialState.COMPLETE]
    distinct = [t for t in earlier if "repeat_of" not in t.user_attrs]

    b = tmp_path / "b"
    (tmp_path / "x").mkdir()
    again = tmp_path / "x" / ".." / "moved"  # the same folder named twice, by another path: read once
    r = run_cli([*TINY_SEARCH, "--trials", "2", "--warm-start", str(moved), str(again), "--out", str(b)],
                tmp_path / "b.log", ENV, 600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"--warm-start {moved}: same setting: {len(distinct)} finished trials imported" in r.stdout
    assert len(_trial_folders(b)) == 2  # only the new trials were trained
    imported = [t for t in _study(b).trials if t.user_attrs.get("warm_start") == str(moved)]
    assert sorted(t.values for t in imported) == sorted(t.values for t in distinct)
    rows = pq.read_table(b / "trials.parquet").to_pylist()
    assert {x["trial_id"] for x in rows if x["warm_start"] == str(moved)} and all(
        x["status"] == "finished" for x in rows if x["warm_start"]
    )
    # the final front is taken over the imported trials and the new ones alike
    ends = [(x["val_metric"], x["train_flops"]) for x in rows if x["schedule_done"]]
    front = pq.read_table(b / "front.parquet").to_pylist()  # by point: of two equal ones, either may stand
    assert {(x["val_metric"], x["train_flops"]) for x in front if x["front"] == "final"} == {
        ends[i] for i in pareto_front(ends)
    }
    assert json.loads((b / "search.json").read_text())["warm_start"] == [
        {"folder": str(moved), "case": "import", "trials": len(distinct)}
    ]

    r = run_cli(["search", "--out", str(b), "--resume", "--trials", "3", "--warm-start", str(moved)],
                tmp_path / "b2.log", ENV, 600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    assert "a resume does not import again" in r.stdout and "finished trials imported" not in r.stdout
    assert len([t for t in _study(b).trials if t.user_attrs.get("warm_start")]) == len(imported)
    assert len(_trial_folders(b)) == 3

    c = tmp_path / "c"
    other = DATA.replace("seed=3", "seed=4")  # another data set: the front's schedules are trained
    r = run_cli([*TINY_SEARCH[:4], other, *TINY_SEARCH[5:], "--trials", "3", "--warm-start", str(moved),
                 "--out", str(c)], tmp_path / "c.log", ENV, 600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    front_a = _study(moved).best_trials
    assert f"--warm-start {moved}: another setting: its front's {len(front_a)} schedules enqueued" in r.stdout
    trained = [t.params for t in _study(c).trials if "repeat_of" not in t.user_attrs][: 1 + len(front_a)]
    assert all(t.params in trained for t in front_a)  # after the baseline, the earlier front's schedules first
