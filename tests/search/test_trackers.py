"""A tiny search logged to the real trackers (MLflow in SQLite, TensorBoard, W&B offline), read back with their
own readers; --dry-run, on a new search and on a resume, writes nothing and starts no trial."""

import os

import pyarrow.parquet as pq
import pytest

from c2f_search.analysis.rows import load_rows

from ..cli.helpers import cli
from ..conftest import TINY_DATA, grid_space, run_cli
from ..trackers import mlflow_runs, scalars, wandb_history

GRID = ["none:1x1", "avgpool:2x0.5,1x0.5"]


def snapshot(folder):
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_dry_run_checks_and_plans_without_ray(tmp_path, capsys):
    import ray

    from c2f_search.cli import main

    out = tmp_path / "s"
    space = grid_space(tmp_path, GRID)
    args = ["search", "--space", str(space), "--data", TINY_DATA, "--depth", "1", "--out", str(out), "--dry-run"]
    assert main(args) == 0
    plan = capsys.readouterr().out
    assert "dry run: start the search" in plan and "trials              2" in plan and "train FLOPs" in plan, plan
    assert not out.exists() and not ray.is_initialized()
    rc, err = cli([*args, "--trials", "0"], capsys)  # the checks run as without it
    assert rc == 2 and "--trials" in err[-1], err


@pytest.mark.slow
def test_a_search_logs_each_trial_to_mlflow_tensorboard_and_wandb(tmp_path, fresh_ray):
    out, db = tmp_path / "s", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_AUTH_MODE": "disabled"}
    args = ["search", "--space", str(grid_space(tmp_path, GRID)), "--data", TINY_DATA, "--depth", "1", "--epochs", "1"]
    args += ["--out", str(out), "--log", f"mlflow={db}", "--log", "tensorboard", "--log", "wandb"]
    r = run_cli(args, tmp_path / "log", env, 600)
    assert r.returncode == 0, r.stdout[-3000:]
    rows = load_rows(out).to_pylist()
    finals = {x["trial_id"]: x for x in rows if x["schedule_done"]}
    assert len(finals) == 2

    runs = mlflow_runs(db)
    (parent,) = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    trials = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(trials) == 2
    assert sorted(x.data.params["schedule"] for x in trials) == sorted(GRID)
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert {"method", "C_per_phase", "epochs_per_phase", "lr", "batch_size"} <= set(run.data.params)
        assert {"val_metric", "train_flops", "C", "train_time_s"} <= set(run.data.metrics)
        final = next(x for x in finals.values() if x["schedule"] == run.data.params["schedule"])
        assert run.data.metrics["val_metric"] == pytest.approx(final["val_metric"])
        assert run.data.metrics["train_flops"] == pytest.approx(final["train_flops"])
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "2"
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient(db).list_artifacts(parent.info.run_id)}
    assert {"front.parquet", "summary.txt"} <= artifacts, artifacts

    trial_dirs = [p.parent for p in (out / "search").glob("*/result.json")]
    assert len(trial_dirs) == 2
    for d in trial_dirs:
        tb = scalars(d)
        assert "ray/tune/val_metric" in tb and "ray/tune/train_flops" in tb
        (run_file,) = d.glob("wandb/offline-run-*/run-*.wandb")
        logged = [h for h in wandb_history(run_file) if "val_metric" in h]
        assert logged and "train_flops" in logged[-1]

    # --dry-run --resume: the plan of what a resume would do, nothing written
    before = snapshot(out)
    r = run_cli(["search", "--out", str(out), "--resume", "--dry-run"], tmp_path / "dry.log", env, 300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "2 finished" in r.stdout and "trains at most 0 more" in r.stdout, r.stdout
    assert snapshot(out) == before
    spent = sum(x["train_flops"] for x in finals.values())
    planned = float(r.stdout.split("train FLOPs")[1].split("at most")[1].split()[0])
    assert planned == pytest.approx(spent, rel=0.01)  # 3 significant digits printed
    r = run_cli(["confirm", str(out), "--top", "1", "--seeds", "1", "--dry-run"], tmp_path / "c.log", env, 300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "dry run" in r.stdout and snapshot(out) == before
    assert pq.read_table(out / "front.parquet").num_rows >= 1
