"""Output folders under concurrency, signals, killed writers and full disks: real processes, real signals.

One command at a time per folder (files.folder_lock), SIGTERM handled like Ctrl-C, an interrupted train or
search resumes without losing finished work, temporaries of killed writers are cleared, and a search
folder can be moved or copied: every command acts on the folder it is given."""

import json
import shutil
import subprocess
import sys

import optuna
import pyarrow.parquet as pq
import pytest

from c2f_search.errors import C2FError
from c2f_search.files import folder_lock, remove_stale_temporaries
from c2f_search.layout import LOCK_FILE

from ..conftest import TINY_DATA
from .helpers import CLI, ENV, TRAIN, cli, wait


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
        f"io.HOST = {host!r}\nwith io.folder_lock({str(folder / LOCK_FILE)!r}, 'x', 'train'):\n"
        "    print('there', flush=True); time.sleep(600)\n"
    )


@pytest.mark.slow
def test_a_second_command_is_refused_naming_the_holder_and_a_dead_holder_blocks_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    a = subprocess.Popen(
        CLI + TRAIN + ["--schedule", "fshift:2x1,1x30", "--out", str(out)], env=ENV, stderr=subprocess.PIPE, text=True
    )
    assert wait(lambda: (out / "checkpoints" / "last.pt").exists(), a), a.communicate()[1][-2000:]
    for args in (
        TRAIN + ["--schedule", "none:1x1", "--out", str(out)],  # the same command twice
        TRAIN + ["--schedule", "none:1x1", "--out", str(out), "--resume"],
        ["search", "--data", TINY_DATA, "--out", str(out)],
    ):
        rc, lines = cli(args, capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert f"--out {out}: in use by c2f-search train (pid {a.pid} on this machine" in lines[0], lines
    assert json.loads((out / "config.json").read_text())["config"]["schedule"] == "fshift:2x1,1x30"  # A's own
    a.kill()  # SIGKILL: the lock file stays behind, naming a process that no longer runs
    a.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == a.pid
    rc, lines = cli(TRAIN + ["--schedule", "none:1x1", "--out", str(out), "--overwrite"], capsys)
    assert rc == 0, lines
    assert json.loads((out / "config.json").read_text())["config"]["schedule"] == "none:1x1"
    assert not (out / LOCK_FILE).exists()


def test_a_holder_on_another_host_is_named_with_how_to_clear_it(tmp_path):
    p = _holder(tmp_path, host="node-b")
    try:
        with pytest.raises(C2FError) as e:
            with folder_lock(tmp_path / LOCK_FILE, f"--out {tmp_path}", "search"):
                pass
        msg = str(e.value)
        assert f"pid {p.pid} on host node-b" in msg and f"delete {tmp_path / LOCK_FILE}" in msg, msg
    finally:
        p.kill()
        p.wait()
    with folder_lock(tmp_path / LOCK_FILE, "x", "search"):  # the kernel released the lock of the dead process
        pass


def test_a_folder_made_for_a_refused_command_is_removed_again(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    rc, lines = cli(TRAIN + ["--schedule", "fshift:3x1,1x1", "--out", str(out)], capsys)
    assert rc == 2 and "C=3 does not divide" in lines[0]
    assert list(tmp_path.iterdir()) == []


def _writer_stopped_before_its_rename(target, content_from):
    """A real process in io.atomic_write of `target`: its temporary file is written in full, the rename to
    come. Killing it leaves that file, as a SIGKILL during a checkpoint write does."""
    return _stopped_at(
        f"io.atomic_write({str(target)!r}, lambda p: (p.write_bytes(open({str(content_from)!r}, "
        "'rb').read()), print('there', flush=True), time.sleep(600)))\n"
    )


@pytest.mark.slow
def test_a_killed_checkpoint_write_is_cleared_and_never_offered(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli(TRAIN + ["--schedule", "avgpool:2x1,1x2", "--out", str(out)], capsys)[0] == 0
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
        rc, lines = cli(["train", "--out", str(out), "--resume"], capsys)
        assert rc == 2 and len(lines) == 1 and f"the newest intact checkpoint is {ck / 'phase1-C2.pt'}" in lines[0]
        left = [p.name for p in ck.iterdir() if p.name.startswith(".tmp-")]
        assert len(left) == 1 and left[0].startswith(f".tmp-{live.pid}@")  # the killed writer's is gone
    finally:
        live.kill()
        live.wait()
    remove_stale_temporaries(ck)
    assert not [p for p in ck.iterdir() if p.name.startswith(".tmp-")]


def test_what_a_killed_data_generator_left_is_cleared_by_the_next(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = {**ENV, "C2F_CACHE": str(cache)}
    spec = "builtin:events?train=3000&val=10&seed=78"
    g = subprocess.Popen(
        [sys.executable, "-c", f"from c2f_search.data import builtin_events as builtin; builtin.materialize({spec!r})"],
        env=env,
    )
    assert wait(lambda: any((cache / "builtin").glob(".tmp-*/train/*.wav")), g)
    g.kill()
    g.wait()
    from c2f_search.data import builtin_events as builtin

    monkeypatch.setenv("C2F_CACHE", str(cache))
    root = builtin.materialize("builtin:events?train=10&val=10&seed=79")
    assert [x.name for x in (cache / "builtin").iterdir()] == [root.name]


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
        assert wait(lambda: (out / "search.json").exists(), p, timeout=300), log.read_text()[-3000:]
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
        assert wait(lambda: (copy / "confirm").exists(), c, timeout=300), log.read_text()[-3000:]
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
