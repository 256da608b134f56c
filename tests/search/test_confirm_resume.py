"""An interrupted confirm, interrupted for real (Ctrl-C, SIGTERM): exit 130 or 143, no result written, the
report says partial, and --resume continues it to the result an uninterrupted confirm gives."""

import json
import shutil
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from ..cli.helpers import CLI, ENV, cli, interruptible
from ..conftest import TINY_DATA, grid_space, kill_ray_session_of, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("confirm-resume")
    space = grid_space(root, ["none:1x2", "fshift:2x1,1x1"])
    args = ["search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--cpus-per-trial", "1"]
    r = run_cli([*args, "--out", str(root / "s")], root / "s.log", ENV, 600)
    assert r.returncode == 0, r.stdout[-3000:]
    return root


def _interrupt(args, log, sig):
    """Run the CLI and send `sig` once the first confirm run reported; (exit code, its output)."""
    with open(log, "w") as f:
        p = subprocess.Popen([*CLI, *args], stdout=f, stderr=subprocess.STDOUT, env=ENV, preexec_fn=interruptible)
    try:
        t = time.time()
        while " epoch " not in log.read_text() and p.poll() is None and time.time() - t < 300:
            time.sleep(0.1)
        assert p.poll() is None, log.read_text()[-3000:]
        p.send_signal(sig)
        p.wait(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
        kill_ray_session_of(p.pid)
    return p.returncode, log.read_text()


def _per_seed(path):
    rows = pq.read_table(path).to_pylist()
    return sorted((r["schedule"], r["seed"], r["best_final_metric"], r["total_flops"]) for r in rows)


def test_an_interrupted_confirm_writes_nothing_final_and_resumes_to_the_same_result(searched, capsys):
    root = searched
    whole, cut = root / "whole", root / "cut"
    shutil.copytree(root / "s", whole)
    shutil.copytree(root / "s", cut)
    r = run_cli(["confirm", str(whole), "--top", "1", "--seeds", "1"], root / "whole.log", ENV, 600)
    assert r.returncode == 0, r.stdout[-3000:]

    rc, out = _interrupt(["confirm", str(cut), "--top", "1", "--seeds", "1"], root / "cut.log", signal.SIGINT)
    assert rc == 130, out[-3000:]
    assert f"continue with: c2f-search confirm {cut} --resume" in out.splitlines()[-1], out[-2000:]
    assert not any(f.exists() for f in (cut / "confirm.parquet", cut / "confirm.txt", cut / "confirm.png"))
    assert json.loads((cut / "confirm" / "confirm.json").read_text())["finished"] is False
    rc, err = cli(["report", str(cut)], capsys)
    assert rc == 0 and "interrupted, partial" in (cut / "report.html").read_text()

    rc, err = cli(["confirm", str(cut), "--resume", "--seeds", "3"], capsys)  # another setting: refused
    assert rc == 2 and "the interrupted confirm runs 1" in err[-1], err
    r = run_cli(["confirm", str(cut), "--resume"], root / "resume.log", ENV, 600)
    assert r.returncode == 0 and "confirm (resumed)" in r.stdout, r.stdout[-3000:]
    assert _per_seed(cut / "confirm_seeds.parquet") == _per_seed(whole / "confirm_seeds.parquet")
    assert (cut / "confirm.txt").read_text() == (whole / "confirm.txt").read_text()
    rc, err = cli(["confirm", str(cut), "--resume"], capsys)
    assert rc == 2 and "that confirm finished" in err[-1], err


def test_sigterm_on_a_target_confirm_exits_143_and_it_resumes(searched, capsys):
    root = searched
    cut = root / "target"
    shutil.copytree(root / "s", cut)
    args = ["confirm", str(cut), "--top", "1", "--seeds", "1", "--target", "t", "--epochs-factor", "1.5"]
    rc, out = _interrupt(args, root / "t.log", signal.SIGTERM)
    assert rc == 143, out[-3000:]
    assert f"c2f-search confirm {cut} --target t --resume" in out.splitlines()[-1], out[-2000:]
    assert not (cut / "confirm" / "t" / "confirm.txt").exists()
    r = run_cli(["confirm", str(cut), "--target", "t", "--resume"], root / "t2.log", ENV, 600)
    assert r.returncode == 0 and "(resumed)" in r.stdout, r.stdout[-3000:]
    assert json.loads((cut / "confirm" / "t" / "target.json").read_text())["finished"] is True
    assert "at the target, per schedule" in (cut / "confirm" / "t" / "confirm.txt").read_text()
