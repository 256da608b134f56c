"""Recipes set what docs/recipes.md says; the balanced sampler and weight averaging they use."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from c2f_search import Run, TrainConfig
from c2f_search.cli import main
from c2f_search.data.sets import balanced_weights
from c2f_search.errors import ConfigError
from c2f_search.recipes import list_recipes, load_recipe
from c2f_search.train.callbacks.averaging import WeightAverage
from c2f_search.validate import validate

from ..conftest import TINY_DATA

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def _doc_rows() -> dict:
    lines = [ln for ln in DOC.read_text().splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {r[0]: dict(zip(head, r)) for r in ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:])}


def test_every_recipe_loads_and_sets_what_the_docs_say():
    rows = _doc_rows()
    assert (
        sorted(rows)
        == list_recipes()
        == ["audioset", "audioset-balanced", "esc50", "kinetics-sounds", "speechcommands", "vggsound", "voxceleb"]
    )
    for name, row in rows.items():
        r = load_recipe(name)
        c = TrainConfig(r.schedule, **r.config())
        start, step, gamma = (float(v) for v in row["LR decay (start, step, gamma)"].split(","))
        got = {
            "epochs": r.epochs,
            "target length": r.data["target_length"],
            "mel": r.data["num_mel_bins"],
            "norm": r.data["norm"],
            "lr": c.lr,
            "batch": c.batch_size,
            "freqm": c.freqm,
            "timem": c.timem,
            "mixup": c.mixup,
            "loss": c.loss,
            "warmup steps": c.warmup_steps,
            "balanced sampler": "yes" if c.balanced_sampling else "no",
            "weight averaging": c.weight_averaging or "-",
            "noise": "yes" if c.noise else "no",
            "model": c.model,
            "patch stride": c.model_kwargs.get("stride", 16),
        }
        for col, value in got.items():
            want = row[col]
            if isinstance(value, (int, float)):
                assert float(want) == pytest.approx(float(value)), (name, col)
            else:
                assert want == value, (name, col)
        assert (c.lr_milestones[0], c.lr_milestones[1] - c.lr_milestones[0], c.lr_gamma) == (start, step, gamma)
        assert c.model_kwargs["dist_token"] is True and c.weight_decay == 5e-7 and c.betas == (0.95, 0.999)
        assert r.schedule == f"none:1x{r.epochs:g}"
    with pytest.raises(ConfigError, match="no such recipe"):
        load_recipe("audiosett")


def test_recipe_flags_override_it_and_config_json_records_both(tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--recipe",
            "audioset",
            "--data",
            TINY_DATA,
            "--model",
            "ast-tiny",
            "--depth",
            "1",
            "--schedule",
            "none:1x2",
            "--target-length",
            "256",
            "--num-mel-bins",
            "64",
            "--batch-size",
            "8",
            "--warmup-steps",
            "2",
            "--lr",
            "3e-4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "config.json").read_text())
    cfg = doc["config"]
    assert doc["recipe"] == "audioset"
    assert doc["overrides"] == {
        "model": "ast-tiny",
        "lr": 3e-4,
        "batch_size": 8,
        "warmup_steps": 2,
        "depth": 1,
        "num_mel_bins": 64,
        "target_length": 256,
    }
    # the rest is the recipe's: same family, so its model settings stay
    assert (cfg["freqm"], cfg["timem"], cfg["mixup"], cfg["loss"], cfg["balanced_sampling"]) == (
        48,
        192,
        0.5,
        "bce",
        True,
    )
    assert cfg["model_kwargs"] == {"dist_token": True, "stride": 10, "depth": 1}
    assert cfg["weight_averaging"] == "from:1" and cfg["lr_milestones"][:2] == [2, 3]
    assert doc["data"]["norm"] == [-4.2677393, 4.5689974]  # the recipe's, by its data set's name
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [r["averaged"] for r in rows] == [False, False, True]  # the averaged model: its own row
    assert (out / "checkpoints" / "averaged.pt").is_file()


def test_a_model_of_another_family_drops_the_recipe_model_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--recipe",
                "esc50",
                "--data",
                TINY_DATA,
                "--model",
                "cnn14-tiny",
                "--schedule",
                "avgpool:2x0.5,1x0.5",
                "--target-length",
                "256",
                "--num-mel-bins",
                "64",
                "--batch-size",
                "8",
                "--no-balanced-sampling",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    doc = json.loads((out / "config.json").read_text())
    assert doc["config"]["model_kwargs"] == {} and doc["config"]["lr"] == 1e-4 and doc["config"]["loss"] == "ce"
    assert doc["overrides"]["model"] == "cnn14-tiny" and "balanced_sampling" not in doc["overrides"]  # esc50: off
    assert "are not used" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- balanced sampler
def test_balanced_weights_are_asts():
    y = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1.0]])
    w = balanced_weights(y)
    a, b, c = 1000 / 3.01, 1000 / 1.01, 1000 / 1.01
    assert torch.allclose(w, torch.tensor([a, a, a + b, c], dtype=torch.float64))


def test_balanced_order_is_a_function_of_seed_and_epoch(tiny_data):
    def order(**kw):
        run = Run(TrainConfig("none:1x1", model_kwargs={"depth": 1}, batch_size=8, **kw), tiny_data, "cpu")
        return [run.pipeline.batch_indices(s, run.steps_per_epoch).tolist() for s in range(2 * run.steps_per_epoch)]

    a, b = order(balanced_sampling=True), order(balanced_sampling=True)
    assert a == b and a != order(balanced_sampling=False)
    first_epoch = sum(a[:5], [])
    assert len(first_epoch) == 40 and len(set(first_epoch)) < 40  # drawn with replacement


# -------------------------------------------------------------------------------- weight averaging
def _rec(C, epoch, metric, step):
    return {"C": C, "epoch": epoch, "val_metric": metric, "step": step}


def test_weight_average_from_and_top():
    m = torch.nn.BatchNorm1d(2)
    ws = []
    wa_from, wa_top = WeightAverage("from:2", final_C=1), WeightAverage("top:2", final_C=1)
    for k, (C, ep, metric) in enumerate([(2, 1, 0.9), (1, 2, 0.1), (1, 3, 0.5), (1, 4, 0.3)]):
        with torch.no_grad():
            m.weight.fill_(k)
            m.num_batches_tracked.fill_(k)
        ws.append(k)
        for wa in (wa_from, wa_top):
            wa.observe(_rec(C, ep, metric, k), m)
    assert torch.allclose(wa_from.averaged()["weight"], torch.full((2,), (1 + 2 + 3) / 3))  # C=2 never counts
    assert torch.allclose(wa_top.averaged()["weight"], torch.full((2,), (2 + 3) / 2))  # metrics 0.5 and 0.3
    assert int(wa_top.averaged()["num_batches_tracked"]) == 3  # a counter keeps the latest, not a mean
    with pytest.raises(ConfigError, match="weight_averaging"):
        validate(TrainConfig("none:1x1", weight_averaging="best:3"))


def test_averaged_record_comes_last_and_resumes_exactly(tiny_data):
    cfg = TrainConfig(
        "fshift:2x1,1x2", model_kwargs={"depth": 1}, batch_size=8, lr=3e-4, warmup_steps=2, weight_averaging="from:2"
    )
    run = Run(cfg, tiny_data, "cpu")
    weights, recs, before_avg = [], [], None
    for rec in run.records():
        recs.append(rec)
        if not rec["averaged"]:
            weights.append({k: v.clone() for k, v in run.model.state_dict().items()})
            before_avg = run.state_dict()
    assert [(r["C"], r["epoch"], r["averaged"]) for r in recs] == [
        (2, 1, False),
        (1, 2, False),
        (1, 3, False),
        (1, 3, True),
    ]
    avg = run.averaging.averaged()
    k = "vit.blocks.0.mlp.fc1.weight"
    assert torch.allclose(avg[k], (weights[1][k] + weights[2][k]) / 2)
    resumed = Run(cfg, tiny_data, "cpu", state=before_avg)
    again = list(resumed.records())
    assert len(again) == 1 and again[0]["averaged"] and again[0]["val_metric"] == recs[-1]["val_metric"]
