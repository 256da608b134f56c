"""Every user mistake through the command line: exit code 2, one line on stderr naming the flag,
file or key, no traceback, and nothing written for a run that never started."""
import json

import pytest
import torch

from c2f_search.cli import main

from .conftest import TINY_DATA

TRAIN = ["train", "--data", TINY_DATA, "--depth", "1", "--batch-size", "8", "--no-progress"]
S = ["--schedule", "fshift:2x1,1x1"]


def _cli(args, capsys):
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else None


def _space(tmp_path, body):
    f = tmp_path / "space.yaml"
    f.write_text(body)
    return str(f)


@pytest.fixture
def bad(tmp_path):
    """Files the cases point at."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pt")
    missing_wav = tmp_path / "d" / "train.json"
    missing_wav.parent.mkdir()
    (tmp_path / "d" / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,a\n")
    missing_wav.write_text(json.dumps({"data": [{"wav": str(tmp_path / "gone.wav"), "labels": "/m/a"}]}))
    _search_folder(tmp_path / "s", flags={"space": "demo", "data": TINY_DATA, "depth": 1}, trials=2)
    _search_folder(tmp_path / "old", flags={})
    return tmp_path


class _RunsCode:
    """A crafted tuner.pkl: unpickling it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _search_folder(d, flags, trials=None, tuner_sha256=None):
    """A search folder as c2f-search leaves it, as far as --resume reads it before anything runs; here
    its tuner.pkl is a crafted one, and search.json says it was written elsewhere."""
    import pickle
    from dataclasses import asdict

    from c2f_search.search.settings import SearchSettings
    (d / "search").mkdir(parents=True)
    (d / "search" / "tuner.pkl").write_bytes(pickle.dumps(_RunsCode(d / "pwned")))
    st = SearchSettings(space="demo", out="/elsewhere/s", data={}, trials=trials, flags=flags,
                        tuner_sha256=tuner_sha256)
    (d / "search.json").write_text(json.dumps(asdict(st)))


CASES = [  # (args, phrase in the one stderr line); {t} is the test's folder
    (TRAIN + S + ["--lr", "-1"], "--lr"),
    (TRAIN + S + ["--lr", "0"], "--lr"),
    (TRAIN + S + ["--lr", "nan"], "--lr"),
    (TRAIN + S + ["--batch-size", "0"], "--batch-size"),
    (TRAIN + S + ["--depth", "0"], "--depth"),
    (TRAIN + S + ["--depth", "-1"], "--depth"),
    (TRAIN + S + ["--target-length", "0"], "--target-length"),
    (TRAIN + S + ["--target-length", "100"], "--target-length: 100 frames is not a multiple of 16"),
    (TRAIN + S + ["--target-length", "272"], "C=2 does not divide the 17 time tokens"),
    (TRAIN + S + ["--num-mel-bins", "8"], "--num-mel-bins: 8 is fewer than the 16"),
    (TRAIN + S + ["--metric-target", "2"], "--metric-target"),
    (TRAIN + S + ["--metric-target", "-1"], "--metric-target"),
    (TRAIN + S + ["--mixup", "1.5"], "--mixup"),
    (TRAIN + S + ["--warmup-steps", "-5"], "--warmup-steps"),
    (TRAIN + S + ["--norm", "loud"], "--norm"),
    (TRAIN + S + ["--precision", "fp64"], "--precision: invalid choice: 'fp64'"),
    (TRAIN + S + ["--features", "fp8"], "--features: invalid choice: 'fp8'"),
    (TRAIN + S + ["--stream-workers", "0"], "--stream-workers"),
    (TRAIN + S + ["--batch-size", "41"], "--batch-size: 41 is more than the 40 training clips"),
    (TRAIN + ["--schedule", "fshift:2xnan,1x1"], "epochs 'nan' is not a number"),
    (TRAIN + ["--schedule", "fshift:2x1,4x1"], "strictly decrease"),
    (TRAIN + ["--schedule", "fshift:3x1,1x1"], "does not divide"),
    (TRAIN + ["--schedule", "avgpool:2x1"], "coarse-only"),
    (TRAIN + S + ["--init", "{t}/notes.txt"], "notes.txt: cannot be read"),
    (TRAIN + S + ["--init", "{t}/other.pt"], "other.pt: not a c2f-search checkpoint"),
    (TRAIN + S + ["--init", "{t}/nope.pth"], "nope.pth: no such checkpoint file"),
    (TRAIN + S + ["--out", "{t}/a_file"], "--out {t}/a_file: is a file"),
    (TRAIN + S + ["--out", "/proc/c2f-x"], "--out /proc/c2f-x: cannot write there"),
    (["train", "--data", "{t}/d/train.json", "--no-progress"] + S, "gone.wav: file not found; fix the 'wav' path in the datafile (listed in {t}/d/train.json"),
    (["train", "--data", "{t}/missing.json"] + S, "datafile not found"),
    (["train", "--data", TINY_DATA], "--schedule is required"),
    (["train"] + S, "--data is required"),
    (["train", "--out", "{t}/nothing", "--resume"], "last.pt not found"),
    (["train", "--data", TINY_DATA, "--model", "cnn14-tiny", "--schedule", "patch-pi:2x1,1x1", "--no-progress"],
     "cnn14-tiny (cnn14) does not support the compression method 'patch-pi'"),
    (TRAIN + S + ["--model", "cnn14-tiny"], "--depth: cnn14-tiny does not take this setting"),
    (TRAIN + S + ["--weight-averaging", "best:3"], "--weight-averaging: 'best:3'"),
    (TRAIN + ["--model", "htsat", "--schedule", "fshift:4x1,1x1"], "C=4 does not divide the 2 time tokens"),
    (["pretrain", "--data", TINY_DATA, "--model", "ast-tiny", "--no-progress"] + S, "ast-tiny cannot be pretrained"),
    (["pretrain", "--data", TINY_DATA, "--mask-patches", "65", "--depth", "1", "--no-progress"] + S,
     "--mask-patches: 65 is more than the 64 patches"),
    (["pretrain", "--data", "{t}/a_file", "--no-progress"] + S, "a_file"),
    (["pareto", "{t}", "--out", "{t}/x.txt"], "x.txt: use a file name ending in .parquet"),
    (["pareto", "{t}", "--ref", "0,-5"], "--ref"),
    (["pareto", "{t}"], "no search results"),
    (["search", "--data", TINY_DATA, "--trials", "0"], "--trials"),
    (["search", "--data", TINY_DATA, "--epochs", "0"], "--epochs"),
    (["search", "--data", TINY_DATA, "--epochs", "-1"], "--epochs"),
    (["search", "--data", TINY_DATA, "--space", "{t}/nope.yaml"], "no such search-space file"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{}}\nfixed: {{batch_size: 0}}\n"],
     "key 'fixed.batch_size'"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{lr: [0.1, -1.0]}}\n"], "key 'space.lr'"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{precision: [bf16, fp32]}}\n"],
     "key 'space.precision': can be fixed (fixed.precision) but not searched"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{}}\nfixed: {{precision: fp8}}\n"],
     "key 'fixed.precision': must be one of auto, fp32, tf32, bf16, fp16"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nspace: {{C_values: [3], coarse_phases: {{low: 0, high: 1}}}}\n"], "key 'space.C_values'"),
    (["search", "--data", TINY_DATA, "--space", "@epochs: 2\nmetric_target: 1.5\nspace: {{}}\n"], "metric_target"),
    # a resume continues the search as it was started: a contradicting flag is refused by name
    (["search", "--resume", "--out", "{t}/s", "--space", "paper"],
     "--space paper: the search in {t}/s was started with --space demo; drop the flag"),
    (["search", "--resume", "--out", "{t}/s", "--epochs", "2"],
     "--epochs 2.0: the search in {t}/s was started without it"),
    (["search", "--resume", "--out", "{t}/s", "--scheduler", "asha"],
     "--scheduler asha: the search in {t}/s was started with --scheduler fifo"),
    (["search", "--resume", "--out", "{t}/s", "--trials", "1"],
     "--trials 1: the search in {t}/s was started with 2 trials; a resume may raise that number, not lower it"),
    # Ray unpickles DIR/search/tuner.pkl: one c2f-search did not write (no hash recorded) is refused
    (["search", "--resume", "--out", "{t}/old"], "search.json: records no hash of"),
    (["confirm", "{t}/nothing"], "{t}/nothing: no such search folder"),
]


@pytest.mark.parametrize("args, phrase", CASES, ids=[" ".join(a[:1] + [p]) for a, p in CASES])
def test_user_mistake_is_one_line(args, phrase, bad, capsys, monkeypatch):
    monkeypatch.chdir(bad)
    out = bad / "run"
    args = [a.replace("{t}", str(bad)).replace("{{", "{").replace("}}", "}") for a in args]
    args = [_space(bad, a[1:]) if a.startswith("@") else a for a in args]
    if args[0] in ("train", "pretrain", "search") and "--out" not in args:
        args += ["--out", str(out)]
    before = _files(bad)
    rc, lines = _cli(args, capsys)
    assert rc == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert phrase.replace("{t}", str(bad)) in lines[0], lines
    assert not out.exists()
    assert _files(bad) == before  # nothing written anywhere for a run that never started


def test_a_crafted_tuner_file_is_refused_before_it_is_unpickled(tmp_path, capsys):
    import hashlib
    d = tmp_path / "s"
    _search_folder(d, flags={}, tuner_sha256=hashlib.sha256(b"the file c2f-search wrote").hexdigest())
    rc, lines = _cli(["search", "--resume", "--out", str(d)], capsys)
    assert rc == 2 and len(lines) == 1 and "tuner.pkl: not the file c2f-search wrote" in lines[0], lines
    assert not (d / "pwned").exists()


def test_a_grid_mistake_is_caught_before_any_feature_is_extracted(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("C2F_CACHE", str(cache))
    rc, lines = _cli(TRAIN + ["--schedule", "fshift:3x1,1x1", "--out", str(tmp_path / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "C=3 does not divide" in lines[0], lines
    assert not list(cache.rglob("fbank-*")) and not (tmp_path / "run").exists()  # no feature store


def test_cache_env_pointing_at_a_file(bad, capsys, monkeypatch):
    monkeypatch.setenv("C2F_CACHE", str(bad / "a_file"))
    rc, lines = _cli(TRAIN + S + ["--out", str(bad / "run")], capsys)
    assert rc == 2 and len(lines) == 1 and "C2F_CACHE" in lines[0] and "is a file" in lines[0], lines


def _wait_for(path, proc, timeout=240):
    import time
    t = time.time()
    while time.time() - t < timeout and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.5)
    return False


def _interruptible():
    """SIGINT as a terminal gives it: a suite started in the background (`cmd &`, nohup) passes SIGINT
    ignored to its children, and Python then installs no KeyboardInterrupt handler."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_train_with_130_and_a_resume_hint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    out = tmp_path / "r"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    p = subprocess.Popen([sys.executable, "-m", "c2f_search.cli", *TRAIN, "--schedule", "fshift:2x1,1x20",
                          "--out", str(out)], stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_interruptible)
    assert _wait_for(out / "checkpoints" / "phase1-C2.pt", p), p.communicate()[1][-2000:]
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
    bad = _space(tmp_path, "epochs: 1\nspace: {C_values: [3], coarse_phases: {low: 0, high: 1}}\n")
    cmd = [sys.executable, "-m", "c2f_search.cli", "search", "--data", TINY_DATA, "--depth", "1", "--out", str(out)]
    p = subprocess.run(cmd + ["--space", bad], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "space.C_values" in p.stderr and not out.exists(), p.stderr[-2000:]
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "search.json: not found" in p.stderr
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 4\nschedules: ['fshift:2x1,1x3', 'none:1x4']\nfixed: {batch_size: 8}\n")
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen(cmd + ["--space", str(good)], stdout=log, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=_interruptible)
    assert _wait_for(out / "search.json", p)
    import time
    time.sleep(8)  # let a trial start
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 130, err[-3000:]
    assert f"interrupted; continue with: c2f-search search --out {out} --resume" in err.strip().splitlines()[-1]
    p = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "front.parquet").exists()
    # the same command again, without --resume: refused before any feature is extracted
    cache = tmp_path / "fresh-cache"
    cache.mkdir()
    p = subprocess.run(cmd + ["--space", str(good)], capture_output=True, text=True, timeout=300,
                       env={**env, "C2F_CACHE": str(cache)})
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "a search is already there" in lines[0], p.stderr[-2000:]
    assert not list(cache.rglob("fbank-*"))
