"""A full disk, wherever a command writes (the feature cache, the built-in data, checkpoints, a write that
fails at fsync): one line naming the file and the free space, exit code 2, no temporary left behind."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .helpers import CLI, ENV, TRAIN, S, cli


def test_a_full_disk_is_named(tmp_path, capsys):
    """A real full disk: a 1 MiB tmpfs, which a run's first checkpoint does not fit (torch's zip writer
    reports it as 'enforce fail at inline_container.cc')."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here; test_a_full_disk_reported_at_fsync_is_named injects it instead")
    try:
        rc, lines = cli(TRAIN + S + ["--out", str(small / "run")], capsys)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert rc == 2 and not any("Traceback" in line for line in lines), lines  # the run's header lines, then
    assert "cannot write it (not enough disk space on the file system of" in lines[-1], lines
    assert "free some space or write to another disk" in lines[-1] and "checkpoints/" in lines[-1]


def test_a_full_disk_reported_at_fsync_is_named(tmp_path, capsys, monkeypatch):
    """Where no tmpfs can be mounted: the file system says ENOSPC at fsync (as delayed allocation does)."""
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    rc, lines = cli(TRAIN + S + ["--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "cannot write it (not enough disk space on the file system" in lines[0], (
        lines
    )


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
@pytest.mark.slow
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
