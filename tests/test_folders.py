"""Output folders under concurrency, signals, killed writers and full disks: real processes, real signals.

One command at a time per folder (io.folder_lock), SIGTERM handled like Ctrl-C, an interrupted train or
search resumes without losing finished work, temporaries of killed writers are cleared, and a search
folder can be moved or copied: every command acts on the folder it is given."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest

from c2f_search.cli import main
from c2f_search.errors import C2FError
from c2f_search.files import LOCK_FILE, folder_lock, remove_stale_temporaries

from .conftest import TINY_DATA

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TRAIN = ["train", "--data", TINY_DATA, "--depth", "1", "--batch-size", "8", "--no-progress"]
CLI = [sys.executable, "-m", "c2f_search.cli"]


def _cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _interruptible():
    """SIGINT as a terminal gives it (a suite started in the background passes SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait(cond, proc, timeout=240):
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        assert proc.poll() is None, f"the command ended (rc {proc.returncode}) before the moment to test"
        time.sleep(0.05)
    return False


def _stopped_at(code):
    """A real process running `code`, once it has printed that it reached the point it waits at."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom c2f_search import files as io\n" + code],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert p.stdout.readline().strip() == "there"
    return p


def _holder(folder, host):
    """A real process holding `folder` as a command does, on a host of another name."""
    return _stopped_at(
        f"io.HOST = {host!r}\nwith io.folder_lock({str(folder)!r}, 'x', 'train'):\n"
        "    print('there', flush=True); time.sleep(600)\n"
    )


def test_a_second_command_is_refused_naming_the_holder_and_a_dead_holder_blocks_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    a = subprocess.Popen(
        CLI + TRAIN + ["--schedule", "fshift:2x1,1x30", "--out", str(out)], env=ENV, stderr=subprocess.PIPE, text=True
    )
    assert _wait(lambda: (out / "checkpoints" / "last.pt").exists(), a), a.communicate()[1][-2000:]
    for args in (
        TRAIN + ["--schedule", "none:1x1", "--out", str(out)],  # the same command twice
        TRAIN + ["--schedule", "none:1x1", "--out", str(out), "--resume"],
        ["search", "--data", TINY_DATA, "--out", str(out)],
    ):
        rc, lines = _cli(args, capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert f"--out {out}: in use by c2f-search train (pid {a.pid} on this machine" in lines[0], lines
    assert json.loads((out / "config.json").read_text())["config"]["schedule"] == "fshift:2x1,1x30"  # A's own
    a.kill()  # SIGKILL: the lock file stays behind, naming a process that no longer runs
    a.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == a.pid
    rc, lines = _cli(TRAIN + ["--schedule", "none:1x1", "--out", str(out), "--overwrite"], capsys)
    assert rc == 0, lines
    assert json.loads((out / "config.json").read_text())["config"]["schedule"] == "none:1x1"
    assert not (out / LOCK_FILE).exists()


def test_a_holder_on_another_host_is_named_with_how_to_clear_it(tmp_path):
    p = _holder(tmp_path, host="node-b")
    try:
        with pytest.raises(C2FError) as e:
            with folder_lock(tmp_path, f"--out {tmp_path}", "search"):
                pass
        msg = str(e.value)
        assert f"pid {p.pid} on host node-b" in msg and f"delete {tmp_path / LOCK_FILE}" in msg, msg
    finally:
        p.kill()
        p.wait()
    with folder_lock(tmp_path, "x", "search"):  # the kernel released the lock of the dead process
        pass


def test_a_folder_made_for_a_refused_command_is_removed_again(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    rc, lines = _cli(TRAIN + ["--schedule", "fshift:3x1,1x1", "--out", str(out)], capsys)
    assert rc == 2 and "C=3 does not divide" in lines[0]
    assert list(tmp_path.iterdir()) == []


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
        CLI + args + ["--out", str(out)], stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_interruptible
    )
    assert _wait(lambda: (out / "config.json").exists(), p), p.communicate()[1][-2000:]
    p.send_signal(sig)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 128 + sig and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].endswith(f"interrupted; continue with: c2f-search train --out {out} --resume")
    assert not (out / "checkpoints" / "last.pt").exists(), "interrupted too late: a checkpoint was written"
    recorded = json.loads((out / "config.json").read_text())
    rc, lines = _cli(["train", "--out", str(out), "--resume", "--no-progress"], capsys)
    assert rc == 0 and any("holds no checkpoint yet" in line for line in lines), lines
    assert json.loads((out / "config.json").read_text())["config"] == recorded["config"]  # depth 1, batch 8
    assert [r["step"] for r in pq.read_table(out / "metrics.parquet").to_pylist()] == [15, 30]


def _writer_stopped_before_its_rename(target, content_from):
    """A real process in io.atomic_write of `target`: its temporary file is written in full, the rename to
    come. Killing it leaves that file, as a SIGKILL during a checkpoint write does."""
    return _stopped_at(
        f"io.atomic_write({str(target)!r}, lambda p: (p.write_bytes(open({str(content_from)!r}, "
        "'rb').read()), print('there', flush=True), time.sleep(600)))\n"
    )


def test_a_killed_checkpoint_write_is_cleared_and_never_offered(tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(TRAIN + ["--schedule", "avgpool:2x1,1x2", "--out", str(out)], capsys)[0] == 0
    ck = out / "checkpoints"
    killed = _writer_stopped_before_its_rename(ck / "last.pt", ck / "last.pt")
    live = _writer_stopped_before_its_rename(ck / "final.pt", ck / "last.pt")  # still writing
    killed.kill()
    killed.wait()
    temps = [p for p in ck.iterdir() if p.name.startswith(".tmp-")]
    assert len(temps) == 2 and {p.stat().st_size for p in temps} == {(ck / "last.pt").stat().st_size}
    try:
        (ck / "final.pt").unlink()
        (ck / "last.pt").write_bytes((ck / "last.pt").read_bytes()[:1000])  # damaged by the crash
        rc, lines = _cli(["train", "--out", str(out), "--resume"], capsys)
        assert rc == 2 and len(lines) == 1 and f"the newest intact checkpoint is {ck / 'phase1-C2.pt'}" in lines[0]
        left = [p.name for p in ck.iterdir() if p.name.startswith(".tmp-")]
        assert len(left) == 1 and left[0].startswith(f".tmp-{live.pid}@")  # the killed writer's is gone
    finally:
        live.kill()
        live.wait()
    remove_stale_temporaries(ck)
    assert not [p for p in ck.iterdir() if p.name.startswith(".tmp-")]


def _fsize_limited(limit):
    """A process whose files cannot grow past `limit` bytes: its writes fail as on a full disk."""
    import resource

    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


@pytest.mark.parametrize(
    "limit, where, phrase",
    [(10_000, "builtin", "free space there, or point $C2F_CACHE"), (200_000, "features", "or pass --no-cache")],
    ids=["audio", "feature-store"],
)
def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, limit, where, phrase):
    cache = tmp_path / "cache"
    env = {**ENV, "C2F_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run(
        CLI
        + TRAIN
        + ["--data", "builtin:events?train=20&val=10&seed=77", "--schedule", "none:1x1", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_fsize_limited(limit),
        timeout=300,
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and phrase in lines[0], p.stderr[-2000:]
    assert str(cache / where) in lines[0] and not (tmp_path / "r").exists()
    assert not [x for x in cache.rglob(".tmp-*")]


def test_what_a_killed_data_generator_left_is_cleared_by_the_next(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = {**ENV, "C2F_CACHE": str(cache)}
    spec = "builtin:events?train=3000&val=10&seed=78"
    g = subprocess.Popen(
        [sys.executable, "-c", f"from c2f_search.data import builtin_events as builtin; builtin.materialize({spec!r})"],
        env=env,
    )
    assert _wait(lambda: any((cache / "builtin").glob(".tmp-*/train/*.wav")), g)
    g.kill()
    g.wait()
    from c2f_search.data import builtin_events as builtin

    monkeypatch.setenv("C2F_CACHE", str(cache))
    root = builtin.materialize("builtin:events?train=10&val=10&seed=79")
    assert [x.name for x in (cache / "builtin").iterdir()] == [root.name]


# ---------------------------------------------------------------------------- searches (Ray)
SCHEDULES = ["none:1x2", "avgpool:2x1,1x1", "fshift:2x1,1x1", "maxpool:2x1,1x1"]


def _space(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text(
        "epochs: 2\nschedules: [" + ", ".join(f'"{x}"' for x in SCHEDULES) + "]\n"
        "fixed: {lr: 3.0e-4, batch_size: 8, warmup_steps: 2}\n"
    )
    return f


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
# SIGINT's interrupt and resume in place: test_cli_errors.py::test_search_interrupted_or_failed_before_a_trial_...
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_search_resumed_in_a_moved_folder_trains_no_finished_trial_again(tmp_path, sig):
    out, moved = tmp_path / "s", tmp_path / "moved"
    cmd = CLI + ["search", "--space", str(_space(tmp_path)), "--data", TINY_DATA, "--depth", "1", "--trials", "3"]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        p = subprocess.Popen(
            cmd + ["--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
            preexec_fn=_interruptible,
        )
        assert _wait(lambda: _finished(log), p, timeout=300), log.read_text()[-3000:]
        done = _finished(log)
        if sig == signal.SIGKILL:  # nothing runs after a SIGKILL: what is lost is what was not saved yet
            assert _wait(lambda: _saved_finished(out, done), p)
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        rc = p.wait(timeout=300)
    if sig == signal.SIGKILL:
        from .test_search import _kill_ray_session_of

        _kill_ray_session_of(p.pid)
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


@pytest.mark.slow
def test_search_and_confirm_hold_their_folder_and_act_on_the_one_given(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\nschedules: ['none:1x1', 'avgpool:2x0.5,1x0.5']\nfixed: {batch_size: 8}\n")
    out = tmp_path / "s"
    log = tmp_path / "search.log"
    with open(log, "w") as f:
        p = subprocess.Popen(
            CLI + ["search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--out", str(out)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
        assert _wait(lambda: (out / "search.json").exists(), p, timeout=300), log.read_text()[-3000:]
        for args in (
            ["search", "--space", str(space), "--data", TINY_DATA, "--out", str(out)],
            ["search", "--out", str(out), "--resume"],
            ["confirm", str(out)],
        ):
            r = subprocess.run(CLI + args, capture_output=True, text=True, env=ENV, timeout=120)
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
            assert f"in use by c2f-search search (pid {p.pid} on this machine" in lines[0], lines
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    study = optuna.load_study(study_name="c2f-search", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2  # no trial run twice
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    log = tmp_path / "confirm.log"
    with open(log, "w") as f:
        c = subprocess.Popen(
            CLI + ["confirm", str(copy), "--top", "1", "--seeds", "1"], stdout=f, stderr=subprocess.STDOUT, env=ENV
        )
        assert _wait(lambda: (copy / "confirm").exists(), c, timeout=300), log.read_text()[-3000:]
        r = subprocess.run(
            CLI + ["confirm", str(copy), "--top", "1", "--seeds", "1", "--overwrite"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert r.returncode == 2 and f"{copy}: in use by c2f-search confirm (pid {c.pid}" in r.stderr, r.stderr
        assert c.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert f"wrote {copy / 'confirm.parquet'}" in log.read_text()
    assert (copy / "confirm.parquet").exists() and len(pq.read_table(copy / "confirm_seeds.parquet")) == 2
    assert not any(x.name.startswith("confirm") for x in out.iterdir())  # the original is left as it was
