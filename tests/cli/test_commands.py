import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from c2f_search.cli import main

from ..conftest import TINY_DATA


def test_train_writes_metrics_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            TINY_DATA,
            "--schedule",
            "fshift:2x1,1x1",
            "--depth",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    t = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["epoch"] for r in t] == [1.0, 2.0] and [r["C"] for r in t] == [2, 1]
    for col in ("schedule", "method", "phase", "step", "train_loss", "val_metric", "train_flops", "wall_time_s"):
        assert col in t[0]
    assert t[1]["train_flops"] > t[0]["train_flops"] > 0
    ck = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ck == ["final.pt", "last.pt", "phase1-C2.pt"]
    # resume of a finished run adds nothing and fails nothing
    assert (
        main(
            [
                "train",
                "--data",
                TINY_DATA,
                "--schedule",
                "fshift:2x1,1x1",
                "--depth",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
                "--no-progress",
                "--resume",
            ]
        )
        == 0
    )
    assert len(pq.read_table(out / "metrics.parquet")) == 2


def test_flops_json_and_saving(capsys):
    assert (
        main(
            [
                "flops",
                "--model",
                "ast-base",
                "--seconds",
                "10",
                "--schedule",
                "fshift:4x5,1x15",
                "--schedule",
                "none:1x20",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["target_length"] == 1024
    fs, base = doc["schedules"]
    assert [p["tokens"] for p in fs["phases"]] == [128, 512]
    expect = 1 - (5 * fs["phases"][0]["gflops_per_sample_step"] + 15 * 290.94) / (20 * 290.94)
    assert abs(fs["saving_vs_none"] - expect) < 1e-3 and base["saving_vs_none"] == 0


@pytest.mark.slow
def test_user_errors_are_one_line_not_tracebacks(tmp_path):
    cases = [
        (["train", "--data", TINY_DATA, "--schedule", "fshift:2x1,4x1"], "strictly decrease"),
        (["train", "--data", str(tmp_path / "missing.json"), "--schedule", "none:1x1"], "datafile not found"),
        (["train", "--data", TINY_DATA, "--schedule", "fshift:3x1,1x1"], "does not divide"),
        (["search", "--space", str(tmp_path / "nope.yaml"), "--data", TINY_DATA], "no such search-space file"),
    ]
    for args, words in cases:
        p = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", *args], capture_output=True, text=True, cwd=tmp_path
        )
        assert p.returncode == 2, p.stderr
        assert words in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_help_answers():
    p = subprocess.run([sys.executable, "-m", "c2f_search.cli", "train", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--metric-target" in p.stdout and "fshift:4x5,1x15" in p.stdout


def test_demo_explains_its_sizes_and_its_space_checks():
    p = subprocess.run([sys.executable, "-m", "c2f_search.cli", "demo", "--help"], capture_output=True, text=True)
    text = " ".join(p.stdout.split())  # argparse wraps lines
    assert p.returncode == 0 and "depth 2" in text and "about 0.7 accuracy" in text
    from c2f_search.cli.demo import DEMO_DEPTH
    from c2f_search.search.space import load_space

    sp = load_space("demo")
    assert sp.coarse_phases[0] == 0 and not sp.hparams and DEMO_DEPTH == 2  # the baseline runs; only schedules vary
