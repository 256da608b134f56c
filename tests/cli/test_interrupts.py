"""Ctrl-C, SIGTERM and SIGKILL, sent for real to real processes: exit codes 130 and 143, how to resume, and
a resumed train or search that loses no finished work (also when the folder was moved in between)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from ..conftest import TINY_DATA, grid_space
from .helpers import CLI, ENV, TRAIN, cli, interruptible, wait


def wait_for(path, proc, timeout=240):
    import time

    t = time.time()
    while time.time() - t < timeout and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_ctrl_c_ends_train_with_130_and_a_resume_hint(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "r"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    p = subprocess.Popen(
        [sys.executable, "-m", "c2f_search.cli", *TRAIN, "--schedule", "fshift:2x1,1x20", "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=interruptible,
    )
    assert wait_for(out / "checkpoints" / "phase1-C2.pt", p), p.communicate()[1][-2000:]
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted; continue with: c2f-search train --out" in last and "--resume" in last
    assert "Traceback" not in err


@pytest.mark.slow
def test_search_interrupted_or_failed_before_a_trial_leaves_out_reusable(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = tmp_path / "s"
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nspace: {C_values: [3], coarse_phases: {low: 0, high: 1}}\n")
    cmd = [sys.executable, "-m", "c2f_search.cli", "search", "--data", TINY_DATA, "--depth", "1", "--out", str(out)]
    p = subprocess.run(cmd + ["--space", str(bad)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "space.C_values" in p.stderr and not out.exists(), p.stderr[-2000:]
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "search.json: not found" in p.stderr
    good = tmp_path / "good.yaml"
    good.write_text(
        "epochs: 2\nschedules: ['fshift:2x1,1x1', 'none:1x2']\nfixed: {batch_size: 8, eval_every: 0.25epoch}\n"
    )
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen(
        cmd + ["--space", str(good)], stdout=log, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=interruptible
    )
    import time

    t = time.time()  # interrupt at a trial's first result: a fixed wait let both finish on a fast machine
    while (
        p.poll() is None
        and time.time() - t < 240
        and not any(f.stat().st_size for f in (out / "search").glob("*/result.json"))
    ):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 130, err[-3000:]
    assert f"interrupted; continue with: c2f-search search --out {out} --resume" in err.strip().splitlines()[-1]
    import pyarrow.fs as pafs

    from c2f_search.analysis.rows import UNFINISHED, _tune_states

    states = _tune_states(pafs.LocalFileSystem(), str(out / "search"))  # Tune's own file, as Tune wrote it
    assert {s["status"] for s in states.values()} & set(UNFINISHED), states  # what pareto calls running, not pruned
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "front.parquet").exists()
    # the same command again, without --resume: refused before any feature is extracted
    cache = tmp_path / "fresh-cache"
    cache.mkdir()
    p = subprocess.run(
        cmd + ["--space", str(good)], capture_output=True, text=True, timeout=300, env={**env, "C2F_CACHE": str(cache)}
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "a search is already there" in lines[0], p.stderr[-2000:]
    assert not list(cache.rglob("fbank-*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_interrupted_before_its_first_checkpoint_restarts_on_resume(tmp_path, capsys, sig):
    args = [
        "train",
        "--data",
        "builtin:events?train=120&val=20&seed=3",
        "--depth",
        "1",
        "--batch-size",
        "8",
        "--no-progress",
        "--schedule",
        "fshift:2x1,1x1",
    ]  # 15 steps before the first checkpoint
    out = tmp_path / "r"
    p = subprocess.Popen(
        CLI + args + ["--out", str(out)], stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=interruptible
    )
    assert wait(lambda: (out / "config.json").exists(), p), p.communicate()[1][-2000:]
    p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 128 + sig and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].endswith(f"interrupted; continue with: c2f-search train --out {out} --resume")
    assert not (out / "checkpoints" / "last.pt").exists(), "interrupted too late: a checkpoint was written"
    recorded = json.loads((out / "config.json").read_text())
    rc, lines = cli(["train", "--out", str(out), "--resume", "--no-progress"], capsys)
    assert rc == 0 and any("holds no checkpoint yet" in line for line in lines), lines
    assert json.loads((out / "config.json").read_text())["config"] == recorded["config"]  # depth 1, batch 8
    assert [r["step"] for r in pq.read_table(out / "metrics.parquet").to_pylist()] == [15, 30]


# ---------------------------------------------------------------------------- searches (Ray)
SCHEDULES = ["none:1x2", "avgpool:2x1,1x1", "fshift:2x1,1x1", "maxpool:2x1,1x1"]


def _trial_lines(text: str, what: str) -> list[str]:
    """Trial ids of runner.TrialLines's lines that say `what` ("[   12s] 1a2b3c4d  finished")."""
    return [ln.split("]", 1)[1].split()[0] for ln in text.splitlines() if ln.startswith("[") and what in ln]


def _finished(log: Path) -> list[str]:
    """Trial ids the driver has reported finished."""
    return _trial_lines(log.read_text() if log.exists() else "", " finished")


def _saved_finished(out: Path, trial_ids) -> bool:
    """Whether Tune's experiment state in the folder has these trials TERMINATED."""
    for f in sorted((out / "search").glob("experiment_state-*.json"), reverse=True)[:1]:
        try:
            trials = [json.loads(t) for t, _ in json.loads(f.read_text())["trial_data"]]
        except (OSError, ValueError):  # being replaced
            return False
        return set(trial_ids) <= {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}
    return False


@pytest.mark.slow
# SIGINT's interrupt and resume in place: test_search_interrupted_or_failed_before_a_trial_leaves_out_reusable
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_search_resumed_in_a_moved_folder_trains_no_finished_trial_again(tmp_path, sig):
    out, moved = tmp_path / "s", tmp_path / "moved"
    cmd = CLI + [
        "search",
        "--space",
        str(grid_space(tmp_path, SCHEDULES)),
        "--data",
        TINY_DATA,
        "--depth",
        "1",
        "--trials",
        "3",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        p = subprocess.Popen(
            cmd + ["--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
            preexec_fn=interruptible,
        )
        assert wait(lambda: _finished(log), p, timeout=300), log.read_text()[-3000:]
        done = _finished(log)
        if sig == signal.SIGKILL:  # nothing runs after a SIGKILL: what is lost is what was not saved yet
            assert wait(lambda: _saved_finished(out, done), p)
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        rc = p.wait(timeout=300)
    if sig == signal.SIGKILL:
        from ..conftest import kill_ray_session_of

        kill_ray_session_of(p.pid)
    else:
        text = log.read_text()
        assert rc == 128 + sig and "Traceback" not in text, text[-3000:]
        assert (
            text.strip().splitlines()[-1] == f"c2f-search search: interrupted; continue with: c2f-search search "
            f"--out {out} --resume"
        )
    shutil.move(out, moved)
    r = subprocess.run(
        CLI + ["search", "--out", str(moved), "--resume", "--trials", "4"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "--trials 4: raising the search from 3 to 4 trials" in r.stdout
    trained = set(_trial_lines(r.stdout, " epoch "))
    assert len(trained) >= 1 and not trained & set(done), r.stdout[-3000:]  # the others, not the finished ones
    assert not out.exists()  # nothing was written where the folder was
    from c2f_search.analysis.rows import load_rows

    rows = load_rows(moved).to_pylist()
    assert sorted(x["schedule"] for x in rows if x["schedule_done"]) == sorted(SCHEDULES)
    assert all(str(moved / "search") in x["checkpoint_path"] for x in rows)
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{moved / 'optuna.db'}")
    assert sorted(t.params["schedule"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE) == sorted(
        SCHEDULES
    )
