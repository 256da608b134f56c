"""--log for train and the checks every command makes before it starts: real MLflow (SQLite), TensorBoard's
event files read by TensorBoard, W&B offline."""

import sys

import pytest

from ..conftest import TINY_DATA
from ..trackers import mlflow_runs, scalars, wandb_history
from .helpers import TRAIN, cli


@pytest.mark.parametrize(
    "log, says",
    [
        ("foo", "not a tracker"),
        ("tensorboard=x", "go into the run's folder"),
        ("mlflow=", "nothing after '='"),
        ("mlflow=ftp://host/x", "'ftp' is not a tracking URI MLflow reads"),
        ("mlflow=http://127.0.0.1:9", "MLflow cannot use it"),
        ("mlflow=sqlite:////etc/hostname/m.db", "cannot be written"),  # a file where a folder must be
    ],
)
@pytest.mark.parametrize("command", ["train", "search"])
def test_a_bad_tracker_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch, log, says, command):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    out = tmp_path / "out"
    search = ["search", "--space", "demo", "--data", TINY_DATA]
    args = [*TRAIN, "--schedule", "avgpool:2x1,1x1"] if command == "train" else search
    rc, err = cli([*args, "--out", str(out), "--log", log], capsys)
    assert rc == 2 and len(err) in (1, 2) and says in err[-1], err  # argparse's usage line, then the one line
    assert not out.exists()


def test_a_missing_tracker_package_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    rc, err = cli([*TRAIN, "--schedule", "avgpool:2x1,1x1", "--out", str(tmp_path / "r"), "--log", "wandb"], capsys)
    assert rc == 2 and err == ["c2f-search train: error: --log wandb: the package 'wandb' is not installed; "
                               "pip install 'c2f-search[track]'"]  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_train_logs_to_mlflow_tensorboard_and_wandb_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: W&B must run offline
    out = tmp_path / "r"
    args = [*TRAIN, "--schedule", "avgpool:2x1,1x1", "--out", str(out)]
    rc, err = cli([*args, "--log", "mlflow", "--log", "tensorboard", "--log", "wandb"], capsys)
    assert rc == 0, err
    (run,) = mlflow_runs(f"sqlite:///{out / 'mlruns' / 'mlflow.db'}")  # the default: DIR/mlruns
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["schedule"] == "avgpool:2x1,1x1" and run.data.params["C_per_phase"] == "2,1"
    assert run.data.params["method"] == "avgpool" and run.data.params["batch_size"] == "8"
    assert {"val_metric", "train_flops", "C", "train_time_s"} <= set(run.data.metrics)
    assert run.data.metrics["C"] == 1  # the last evaluation's, at full resolution
    tb = scalars(out / "tensorboard")
    assert tb["C"] == [2.0, 1.0] and len(tb["val_metric"]) == 2 and tb["train_flops"][1] > tb["train_flops"][0]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = [h for h in wandb_history(run_file) if "val_metric" in h]
    assert [h["C"] for h in history] == [2, 1] and history[-1]["val_metric"] == pytest.approx(tb["val_metric"][-1])


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, capsys):
    out, db = tmp_path / "r", f"sqlite:///{tmp_path / 'm.db'}"
    assert cli([*TRAIN, "--schedule", "avgpool:2x1,1x1", "--out", str(out), "--log", f"mlflow={db}"], capsys)[0] == 0
    (first,) = mlflow_runs(db)
    (out / "checkpoints" / "final.pt").unlink()
    rc, err = cli(["train", "--out", str(out), "--resume-from", str(out / "checkpoints" / "phase1-C2.pt"),
                   "--no-progress", "--log", f"mlflow={db}"], capsys)  # fmt: skip
    assert rc == 0, err
    (again,) = mlflow_runs(db)
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"


def test_a_tracker_failing_mid_run_warns_once_and_the_run_goes_on(tmp_path):
    from mlflow.tracking import MlflowClient

    from c2f_search.train.callbacks.tracking import Tracker, Tracking

    cb = Tracking([Tracker("mlflow", f"sqlite:///{tmp_path / 'm.db'}")], tmp_path, "r", {"schedule": "none:1x1"})
    cb.on_fit_start(None)
    assert "mlflow" in cb.writers

    def gone(*a, **k):  # the server went away
        raise ConnectionError("connection refused")

    cb.writers["mlflow"].log_batch = gone
    with pytest.warns(UserWarning, match="--log mlflow: logging failed .*connection refused"):
        cb.on_eval_end(None, {"step": 1, "val_metric": 0.5})
    assert cb.writers == {}
    cb.on_eval_end(None, {"step": 2, "val_metric": 0.6})  # dropped: no second warning, no error
    cb.on_fit_end(None)
    assert MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").get_run(cb.mlflow_run).info.status == "RUNNING"


def test_a_search_tracker_that_cannot_connect_warns_and_stops_only_itself(monkeypatch, capsys):
    from c2f_search.search.trackers import MLflowTrials

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cb = MLflowTrials(tracking_uri="http://127.0.0.1:9", experiment_name="c2f-search")
    cb.setup()
    assert "warning: --log mlflow: connecting failed" in capsys.readouterr().err
    cb.log_trial_start(object())  # no run to log to: nothing happens, nothing raises
    cb.log_trial_result(1, object(), {"val_metric": 0.5})
    cb.log_trial_end(object())
    assert capsys.readouterr().err == ""  # warned once
