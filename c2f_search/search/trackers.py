"""A search's (or confirm's) trials in experiment trackers, through Ray Tune's own logger callbacks: each trial
one run, its schedule, method, C per phase and hyperparameters as parameters, every report's numbers as metrics,
its status at its end. MLflow also gets a parent run per search, holding the front and summary.txt as
artifacts. A tracker that fails warns once and is dropped: the search's own files are the record."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from ..train.callbacks.tracking import EXPERIMENT, experiment, schedule_params, wandb_mode


class _Tolerant:
    """Runs a logger callback's hooks so that a failure warns once and stops only that tracker; knows a trial's
    parameters beyond its config (Tune logs the sampled values): its schedule's and the space's fixed settings."""

    kind = ""
    fixed: dict = {}

    def params(self, trial) -> dict:
        own = {k: v for k, v in self.fixed.items() if k not in trial.config}  # Tune logs the trial's own values
        return {**own, **schedule_params(trial.config.get("schedule", ""))}

    def _safely(self, what: str, fn) -> None:
        if getattr(self, "_broken", False):
            return
        try:
            fn()
        except Exception as e:  # a tracker's error (network, server, disk) must not stop a search
            self._broken = True
            print(
                f"warning: --log {self.kind}: {what} failed ({type(e).__name__}: {str(e)[:200]}); nothing more "
                f"is logged there, the search goes on (its own files are the record)",
                file=sys.stderr,
                flush=True,
            )


def trial_status(trial, failed: bool) -> str:
    """finished, pruned (stopped early by the scheduler) or error: as the search's rows say it."""
    if failed:
        return "error"
    return "finished" if (trial.last_result or {}).get("schedule_done") else "pruned"


class MLflowTrials(_Tolerant, MLflowLoggerCallback):
    kind = "mlflow"

    def setup(self, *args, **kwargs):
        self._trial_runs = {}
        self._safely("connecting", lambda: super(MLflowTrials, self).setup(*args, **kwargs))

    def log_trial_start(self, trial):
        def start():
            super(MLflowTrials, self).log_trial_start(trial)
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=self.params(trial))

        self._safely("starting a trial's run", start)

    def log_trial_result(self, iteration, trial, result):
        self._safely("logging a result", lambda: super(MLflowTrials, self).log_trial_result(iteration, trial, result))

    def log_trial_end(self, trial, failed=False):
        def end():
            from mlflow.tracking import MlflowClient

            MlflowClient(self.tracking_uri).set_tag(self._trial_runs[trial], "status", trial_status(trial, failed))
            super(MLflowTrials, self).log_trial_end(trial, failed)

        self._safely("ending a trial's run", end)


class TensorBoardTrials(_Tolerant, TBXLoggerCallback):
    kind = "tensorboard"

    def log_trial_start(self, trial):
        self._safely("starting a trial's log", lambda: super(TensorBoardTrials, self).log_trial_start(trial))

    def log_trial_result(self, iteration, trial, result):
        fn = lambda: super(TensorBoardTrials, self).log_trial_result(iteration, trial, result)  # noqa: E731
        self._safely("logging a result", fn)

    def log_trial_end(self, trial, failed=False):
        def end():
            writer = self._trial_writer.get(trial)
            if writer is not None:
                writer.add_text("status", trial_status(trial, failed))
                for k, v in self.params(trial).items():
                    writer.add_text(f"params/{k}", str(v))
            super(TensorBoardTrials, self).log_trial_end(trial, failed)

        self._safely("ending a trial's log", end)


class WandbTrials(_Tolerant, WandbLoggerCallback):
    kind = "wandb"

    def setup(self, *args, **kwargs):
        self._safely("connecting", lambda: super(WandbTrials, self).setup(*args, **kwargs))

    def _start_logging_actor(self, trial, exclude_results, **init):
        init["config"] = {**init.get("config", {}), **self.params(trial)}
        import pyarrow.fs

        if isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
            # W&B writes its offline run after the trial ends, after Tune last copied the trial's staging
            # folder to storage: write it in the trial's folder in storage itself
            init["dir"] = trial.path
        super()._start_logging_actor(trial, exclude_results, **init)

    def log_trial_start(self, trial):
        self._safely("starting a trial's run", lambda: super(WandbTrials, self).log_trial_start(trial))

    def log_trial_result(self, iteration, trial, result):
        self._safely("logging a result", lambda: super(WandbTrials, self).log_trial_result(iteration, trial, result))

    def log_trial_end(self, trial, failed=False):
        self._safely("ending a trial's run", lambda: super(WandbTrials, self).log_trial_end(trial, failed))


def tune_callbacks(trackers: list[dict], label: str, fixed: dict | None = None) -> list:
    """Ray Tune logger callbacks for the recorded trackers ({kind, target, parent_run}); `label` tags each
    trial's run with where it comes from (the search folder, or a confirm's); `fixed`: the settings every trial
    shares (the space's fixed values, the model), logged with each trial's own."""
    out = []
    for t in trackers:
        if t["kind"] == "mlflow":
            tags = {"c2f_search.out": label}
            if t.get("parent_run"):
                tags["mlflow.parentRunId"] = t["parent_run"]
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
            out.append(MLflowTrials(tracking_uri=t["target"], experiment_name=name, tags=tags))
        elif t["kind"] == "tensorboard":
            out.append(TensorBoardTrials())
        else:
            wandb_mode()
            out.append(WandbTrials(project=t["target"], group=Path(label).name))
    for cb in out:
        cb.fixed = {k: v for k, v in (fixed or {}).items() if isinstance(v, (str, int, float, bool))}
    return out


def start_parent(trackers: list[dict], out: str, params: dict) -> list[dict]:
    """The trackers as search.json records them; MLflow's with a parent run for the search (its settings as
    parameters), under which every trial's run goes."""
    records = []
    for t in trackers:
        record = dict(t)
        if t["kind"] == "mlflow" and not t.get("parent_run"):
            from mlflow.tracking import MlflowClient

            client = MlflowClient(t["target"])
            run = client.create_run(experiment(t["target"]), run_name=Path(out).name, tags={"c2f_search.out": out})
            for k, v in params.items():
                client.log_param(run.info.run_id, k, str(v)[:500])
            record["parent_run"] = run.info.run_id
        records.append(record)
    return records


def finish_parent(trackers: list[dict], files: list[Path], status: str = "FINISHED") -> None:
    """The front and summary as artifacts of MLflow's parent run, which ends with `status`. Warns on failure."""
    for t in trackers:
        if t["kind"] != "mlflow" or not t.get("parent_run"):
            continue
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(t["target"])
            for f in files:
                if Path(f).is_file():
                    client.log_artifact(t["parent_run"], str(f))
            client.set_terminated(t["parent_run"], status)
        except Exception as e:  # the search's files are written already: a tracker's failure only warns
            print(f"warning: --log mlflow: the search's artifacts could not be logged ({e})", file=sys.stderr)
