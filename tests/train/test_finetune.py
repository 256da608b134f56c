"""`c2f-search pretrain` on unlabelled audio, then `train --init` from its checkpoint."""

import json

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import torch

from c2f_search import load_checkpoint
from c2f_search.cli import main
from c2f_search.data.sets import unlabelled_sets

from ..conftest import TINY_DATA

SMALL = ["--depth", "1", "--batch-size", "8", "--no-progress"]


def test_pretrain_then_finetune_from_its_checkpoint(tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    assert main(["pretrain", "--data", TINY_DATA, "--schedule", "fshift:2x1,1x1", "--out", str(pre), *SMALL]) == 0
    rows = pq.read_table(pre / "metrics.parquet").to_pylist()
    assert [(r["C"], r["metric_name"]) for r in rows] == [(2, "masked_patch_accuracy"), (1, "masked_patch_accuracy")]
    assert rows[1]["train_flops"] > rows[0]["train_flops"] > 0
    state = load_checkpoint(pre / "checkpoints" / "final.pt")
    assert state["model_name"] == "ssast-tiny" and state["config"]["objective"] == "masked-patch"
    assert json.loads((pre / "config.json").read_text())["classes"] == ["unlabelled"]
    assert (
        main(
            [
                "train",
                "--data",
                TINY_DATA,
                "--model",
                "ssast-tiny",
                "--schedule",
                "patch-pi:2x1,1x1",
                "--init",
                str(pre / "checkpoints" / "final.pt"),
                "--out",
                str(ft),
                *SMALL,
            ]
        )
        == 0
    )
    rows = pq.read_table(ft / "metrics.parquet").to_pylist()
    assert [(r["C"], r["metric_name"]) for r in rows] == [(2, "accuracy"), (1, "accuracy")]
    # the supervised run started from the encoder: its first checkpoint still holds the untouched heads
    tuned = load_checkpoint(ft / "checkpoints" / "phase1-C2.pt")
    assert torch.equal(tuned["model"]["cpred.0.weight"], state["model"]["cpred.0.weight"])
    assert not torch.equal(
        tuned["model"]["vit.blocks.0.attn.qkv.weight"], state["model"]["vit.blocks.0.attn.qkv.weight"]
    )
    # a pretraining run continues only as one
    assert main(["train", "--out", str(pre), "--resume", "--no-progress"]) == 2


def _wavs(d, n, seconds=1.5):
    rng = np.random.default_rng(0)
    for i in range(n):
        f = d / f"sub{i % 2}" / f"clip{i:02d}.wav"
        f.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(f), (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)


def test_a_folder_of_audio_pretrains_with_a_held_out_tenth(tmp_path):
    _wavs(tmp_path / "audio", 20)
    tr, va = unlabelled_sets(str(tmp_path / "audio"))
    assert (len(tr), len(va)) == (18, 2) and not set(tr.paths) & set(va.paths)
    assert tr.targets.shape == (18, 1) and tr.classes == ["unlabelled"]
    out = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "--data",
                str(tmp_path / "audio"),
                "--schedule",
                "avgpool:2x1,1x1",
                "--target-length",
                "128",
                "--num-mel-bins",
                "64",
                "--out",
                str(out),
                *SMALL,
            ]
        )
        == 0
    )
    assert len(pq.read_table(out / "metrics.parquet")) == 2


def test_a_datafile_pretrains_without_its_labels(tmp_path):
    _wavs(tmp_path / "a", 4)
    entries = [{"wav": str(p), "labels": "/m/not-in-any-csv"} for p in sorted((tmp_path / "a").rglob("*.wav"))]
    (tmp_path / "train.json").write_text(json.dumps({"data": entries}))
    tr, va = unlabelled_sets(str(tmp_path / "train.json"), str(tmp_path / "train.json"))
    assert len(tr) == len(va) == 4  # no class_labels_indices.csv needed, labels never read
