"""Run folders: derived target length, refused reuse, --overwrite, resume with the recorded
configuration, damaged checkpoints and caches, safe checkpoint loading, atomic writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from c2f_search import load_checkpoint
from c2f_search.cli import main
from c2f_search.errors import CheckpointError

from ..conftest import TINY_DATA

BASE = ["train", "--data", TINY_DATA, "--depth", "1", "--batch-size", "8", "--no-progress"]


def _cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.err


def test_three_second_clips_get_about_320_frames(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(4):
                sf.write(
                    str(tmp_path / "d" / split / c / f"{i}.wav"),
                    rng.standard_normal(48000).astype("float32") * 0.1,
                    16000,
                )
    rc, err = _cli(
        [
            "train",
            "--data",
            str(tmp_path / "d"),
            "--schedule",
            "avgpool:2x1,1x1",
            "--depth",
            "1",
            "--batch-size",
            "4",
            "--num-mel-bins",
            "32",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "target length 320 frames" in err and "95% of the 8 training clips have at most 298 frames" in err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["frontend"]["target_length"] == 320 and "95%" in cfg["target_length_reason"]
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "final.pt")["geometry"]["frames"] == 320


def test_reuse_overwrite_resume_and_conflicting_flags(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert _cli(BASE + ["--schedule", "avgpool:2x1,1x1", "--out", out], capsys)[0] == 0
    (tmp_path / "r" / "checkpoints" / "phase1-C4.pt").write_bytes(b"stale")  # left from an older run
    rc, err = _cli(BASE + ["--schedule", "fshift:2x1,1x1", "--out", out], capsys)
    assert rc == 2 and "holds a run already" in err
    assert pq.read_table(tmp_path / "r" / "metrics.parquet").column("schedule")[0].as_py() == "avgpool:2x1,1x1"
    rc, err = _cli(["train", "--out", out, "--resume", "--batch-size", "4"], capsys)
    assert rc == 2 and "--batch-size 4: the run was trained with --batch-size 8" in err
    rc, err = _cli(["train", "--out", out, "--resume", "--depth", "2"], capsys)
    assert rc == 2 and "--depth 2: the run was trained with --depth 1" in err
    rc, err = _cli(["train", "--out", out, "--resume", "--precision", "bf16"], capsys)  # auto ran fp32 on the CPU
    assert rc == 0 and "the checkpoint trained in fp32; it continues in bf16 (--precision bf16)" in err
    rc, err = _cli(["train", "--out", out, "--resume", "--no-progress", "--precision", "fp32", "--compile"], capsys)
    assert rc == 0  # the precision it ran at, and how it executes, may be given on a resume
    rc, err = _cli(["train", "--out", out, "--resume", "--no-progress"], capsys)  # recorded settings, finished run
    assert rc == 0 and len(pq.read_table(tmp_path / "r" / "metrics.parquet")) == 2
    assert _cli(BASE + ["--schedule", "fshift:2x1,1x1", "--out", out, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["final.pt", "last.pt", "phase1-C2.pt"]
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["config"]["schedule"] == "fshift:2x1,1x1" and cfg["config"]["model_kwargs"] == {"depth": 1}
    assert cfg["config"]["precision"] == "auto" and cfg["resolved"] == {
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
    }


def test_damaged_last_checkpoint_names_the_intact_one_and_resume_from_it(tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(BASE + ["--schedule", "avgpool:2x1,1x2", "--out", str(out)], capsys)[0] == 0
    full = pq.read_table(out / "metrics.parquet").to_pylist()
    ck = out / "checkpoints"
    (ck / "final.pt").unlink()
    (ck / "last.pt").write_bytes((ck / "last.pt").read_bytes()[:1000])  # truncated by a crash
    rc, err = _cli(["train", "--out", str(out), "--resume"], capsys)
    assert rc == 2 and "last.pt: cannot be read" in err and f"--resume-from {ck / 'phase1-C2.pt'}" in err
    rc, err = _cli(["train", "--out", str(out), "--resume-from", str(ck / "phase1-C2.pt"), "--no-progress"], capsys)
    assert rc == 0, err
    again = pq.read_table(out / "metrics.parquet").to_pylist()
    key = ("step", "C", "train_loss", "val_metric", "train_flops")
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in full]


def test_fork_from_another_runs_checkpoint(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _cli(BASE + ["--schedule", "maxpool:2x1,1x1", "--out", str(a)], capsys)[0] == 0
    rc, err = _cli(
        [
            "train",
            "--schedule",
            "maxpool:2x1,1x2",
            "--resume-from",
            str(a / "checkpoints" / "final.pt"),
            "--out",
            str(b),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, err
    rows = pq.read_table(b / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [5, 10, 15] and {r["schedule"] for r in rows} == {"maxpool:2x1,1x2"}
    rc, err = _cli(
        [
            "train",
            "--schedule",
            "avgpool:2x1,1x2",
            "--resume-from",
            str(a / "checkpoints" / "final.pt"),
            "--out",
            str(tmp_path / "c"),
            "--no-progress",
        ],
        capsys,
    )
    assert (
        rc == 2
        and "cannot continue avgpool:2x1,1x2" in err
        and "trained C=2 by maxpool, this run trains C=2 by avgpool" in err
    )


def test_truncated_feature_cache_is_moved_aside_and_rebuilt(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("C2F_CACHE", str(tmp_path / "cache"))
    args = BASE + ["--schedule", "none:1x1", "--data", "builtin:events?train=10&val=10&seed=9"]
    assert _cli(args + ["--out", str(tmp_path / "r1")], capsys)[0] == 0
    stores = sorted((tmp_path / "cache" / "features").glob("fbank-*.arrow"))
    stores[0].write_bytes(stores[0].read_bytes()[:500])
    rc, err = _cli(args + ["--out", str(tmp_path / "r2")], capsys)
    assert rc == 0 and f"feature cache {stores[0]} cannot be read" in err
    assert stores[0].with_name(stores[0].name + ".damaged").exists() and stores[0].exists()
    a, b = (pq.read_table(tmp_path / r / "metrics.parquet").column("val_metric").to_pylist() for r in ("r1", "r2"))
    assert a == b


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": Evil(), "model_name": "ast-tiny"}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to load it") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "add_safe_globals" not in str(e.value)  # torch's hint to allow-list the call is the unsafe way out
    for flag in ("--init", "--resume-from"):  # and through the command line
        rc, err = _cli(
            BASE
            + ["--schedule", "none:1x1", flag, str(tmp_path / "evil.pt"), "--out", str(tmp_path / flag.strip("-"))],
            capsys,
        )
        assert rc == 2 and "refused to load it" in err and "Traceback" not in err, err
    assert not marker.exists()


def test_skip_bad_header_counts_the_clips_used(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/a,a\n1,/m/b,b\n")
    entries = []
    for i in range(6):
        p = tmp_path / f"{i}.wav"
        sf.write(str(p), rng.standard_normal(16000).astype("float32") * 0.1, 16000)
        entries.append({"wav": str(p), "labels": "/m/a" if i % 2 else "/m/b"})
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt junk")
    entries.append({"wav": str(tmp_path / "broken.wav"), "labels": "/m/a"})
    (tmp_path / "train.json").write_text(json.dumps({"data": entries}))
    rc, err = _cli(
        [
            "train",
            "--data",
            str(tmp_path / "train.json"),
            "--schedule",
            "none:1x1",
            "--depth",
            "1",
            "--batch-size",
            "2",
            "--skip-bad",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "| 6 train / 6 val clips |" in err and "skipped 1 clips" in err
