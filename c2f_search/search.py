"""Schedule search: Ray Tune runs the trials, Optuna (through Tune's OptunaSearch) samples them.

Objectives: maximize ``val_metric``, minimize cumulative ``train_flops``. The study lives
in ``DIR/optuna.db`` (SQLite) and Tune's experiment in ``DIR/search``; ``--resume``
restores both.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from .spaces import Space, SpaceError, load_space

# Tune warns on every frequent checkpoint; a search checkpoints every epoch by design
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
EXPERIMENT = "search"
STUDY = "c2f-search"


@dataclass
class SearchSettings:
    space: str
    out: str
    data: dict  # kwargs for c2f_search.train.Data.from_specs, paths absolute
    trials: int | None = None  # None: 12, or the whole grid
    sampler: str = "auto"
    scheduler: str = "fifo"
    epochs: float | None = None
    seed: int = 0
    max_failures: int = 1
    keep_checkpoints: int | None = 2
    resources: dict = field(default_factory=dict)
    model_kwargs: dict = field(default_factory=dict)
    metric_target: float | None = None
    storage: str | None = None  # Tune storage_path (local folder or URI); default DIR

    def save(self) -> None:
        p = Path(self.out) / "search.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, p)

    @classmethod
    def load(cls, out) -> "SearchSettings":
        p = Path(out) / "search.json"
        if not p.is_file():
            raise SpaceError(f"{p}: not found; --resume needs the DIR of an earlier search")
        return cls(**json.loads(p.read_text()))


class C2FOptunaSearch(OptunaSearch):
    """Only a trial whose schedule finished is COMPLETE; one stopped early (ASHA) is PRUNED,
    so unfinished schedules never reach the study's Pareto front."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result is not None and not error and not result.get("schedule_done"):
            result = None
        super().on_trial_complete(trial_id, result, error)


def make_sampler(name: str, space: Space, seed: int, epochs):
    if name == "auto":
        name = "grid" if space.is_grid else "tpe"
    if name == "grid":
        if not space.is_grid:
            raise SpaceError(f"{space.path}: --sampler grid needs a space with a 'schedules' list (e.g. paper.yaml)")
        if space.hparams:
            raise SpaceError(f"{space.path}: --sampler grid runs listed schedules; move searched hyperparameters to 'fixed'")
        return optuna.samplers.GridSampler({"schedule": space.grid(epochs)}, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpaceError(f"--sampler {name!r}: choose tpe, nsga2, random or grid")


def make_searcher(space: Space, settings: SearchSettings, epochs: float, storage) -> C2FOptunaSearch:
    """Multi-objective OptunaSearch over a space: val_metric up, train_flops down."""
    # an open space that allows the baseline runs it first, so every front has a reference
    baseline_first = [{"coarse_phases": 0}] if not space.is_grid and space.coarse_phases[0] == 0 else None
    return C2FOptunaSearch(space=space.define_by_run(epochs), metric=["val_metric", "train_flops"],
                           mode=["max", "min"], points_to_evaluate=baseline_first,
                           sampler=make_sampler(settings.sampler, space, settings.seed, epochs),
                           study_name=STUDY, storage=storage, seed=settings.seed)


class TrialLines(Callback):
    """One line per result, per finished and per failed trial."""

    def __init__(self, stream=None):
        self.stream, self.t0 = stream, time.time()

    def __getstate__(self):  # Tune pickles callbacks with its experiment state; streams do not pickle
        return {"stream": None, "t0": self.t0}

    def _p(self, text):
        print(f"[{time.time() - self.t0:6.0f}s] {text}", file=self.stream or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._p(f"{trial.trial_id:<14} {result.get('schedule', ''):<30} phase {result.get('phase')} "
                f"C={result.get('C')} epoch {result.get('epoch', 0):5.2f}  "
                f"{result.get('metric_name', 'metric')}={result.get('val_metric', float('nan')):.3f}  "
                f"{result.get('train_flops', 0) / 1e12:8.2f} TFLOPs")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        self._p(f"{trial.trial_id:<14} {'finished' if r.get('schedule_done') else 'stopped early (pruned)'}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._p(f"{trial.trial_id:<14} FAILED: {trial.error_file or 'see its error.txt'}")


def prepare_data(settings: SearchSettings, space: Space, progress=True):
    """Check the data and extract every frame shift the space may read, once, in the driver."""
    from .train import Data
    d = settings.data
    data = Data.from_specs(**d, progress=progress)
    for C in sorted(space.fshift_Cs()):
        for split in ("train", "val"):
            data.features(split, data.fe.frame_shift_ms * C)
    return data


def resolve_data_args(data_spec: str, val, labels, task, skip_bad, norm, cache_dir, num_mel_bins,
                      target_length) -> dict:
    """Absolute paths and an explicit front end, so trials on any node and any cwd read the same data."""
    from . import builtin
    from .data import default_frontend
    fe = default_frontend(data_spec, num_mel_bins=num_mel_bins, target_length=target_length)
    if data_spec.startswith("builtin:"):
        root = builtin.materialize(data_spec)
        data_spec, val, labels = str(root / "train.json"), val or str(root / "val.json"), str(root / "class_labels_indices.csv")
    absp = lambda p: None if p is None or p.startswith("builtin:") else str(Path(p).resolve())  # noqa: E731
    return {"train": absp(data_spec), "val": absp(val) if val else None, "labels": absp(labels), "task": task,
            "skip_bad": skip_bad, "norm": norm, "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
            "num_mel_bins": fe.num_mel_bins, "target_length": fe.target_length}


def _unreachable(address: str, why) -> SpaceError:
    return SpaceError(f"--address {address}: cannot reach a Ray cluster ({why}); start one with 'ray start --head' "
                      f"or 'ray up cluster.yaml', or drop --address to run locally")


def connect_ray(address: str | None) -> None:
    """Start a local Ray instance (address None) or join a cluster, failing fast when it is unreachable
    (ray.init itself retries for minutes)."""
    import socket

    import ray
    if address and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise _unreachable(address, e) from None
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise _unreachable(address, e) from None


def check_storage(out: Path, storage: str | None, filesystem=None) -> None:
    """Fail before any trial when results cannot be written."""
    import pyarrow.fs as pafs
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise SpaceError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    if storage or filesystem is not None:
        try:
            fs, root = (filesystem, storage or "") if filesystem is not None else pafs.FileSystem.from_uri(storage)
            fs.create_dir(f"{root.rstrip('/')}/search" if root else "search", recursive=True)
        except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... for bad URIs and credentials
            raise SpaceError(f"--storage {storage}: cannot write there ({e}); check the URI and credentials") from None


def run_search(settings: SearchSettings, resume: bool = False, address: str | None = None,
               progress_stream=None, storage_filesystem=None):
    """Run (or resume) a search; returns Tune's ResultGrid."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from trainables import train_schedule

    space = load_space(settings.space)
    out = Path(settings.out).resolve()
    check_storage(out, settings.storage, storage_filesystem)
    data = prepare_data(settings, space)  # fails here, before any trial, on bad data
    settings.data["norm"] = [data.mean, data.std]  # every trial normalizes alike
    settings.save()
    epochs = settings.epochs or space.epochs
    setup = {"data": settings.data, "model": space.model, "fixed": space.fixed,
             "model_kwargs": settings.model_kwargs, "metric_target": settings.metric_target or space.metric_target}
    res = {**space.resources, **{k: v for k, v in settings.resources.items() if v is not None}}
    trainable = tune.with_resources(tune.with_parameters(train_schedule, setup=setup),
                                    {"cpu": res.get("cpu", 1), "gpu": res.get("gpu", 0)})

    if not ray.is_initialized():
        connect_ray(address)
    storage_path = settings.storage or str(out)
    exp_dir = f"{storage_path.rstrip('/')}/{EXPERIMENT}"
    if resume:
        if not tune.Tuner.can_restore(exp_dir, storage_filesystem=storage_filesystem):
            raise SpaceError(f"{exp_dir}: no search to resume; run without --resume")
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    else:
        if tune.Tuner.can_restore(exp_dir, storage_filesystem=storage_filesystem):
            raise SpaceError(f"{exp_dir}: a search is already there; pass --resume to continue it or choose a new --out")
        searcher = make_searcher(space, settings, epochs, optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}"))
        grid_mode = space.is_grid and settings.sampler in ("auto", "grid")
        n = min(settings.trials or len(space.grid()), len(space.grid())) if grid_mode else (settings.trials or 12)
        if settings.scheduler == "asha":
            max_t = _max_flops(data, space, epochs, settings.model_kwargs)
            sched = ASHAScheduler(time_attr="train_flops", metric="val_metric", mode="max", max_t=max_t,
                                  grace_period=max_t / 4, reduction_factor=2)
        elif settings.scheduler == "fifo":
            sched = FIFOScheduler()
        else:
            raise SpaceError(f"--scheduler {settings.scheduler!r}: choose fifo or asha")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=n),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=storage_path, storage_filesystem=storage_filesystem, verbose=0, callbacks=[TrialLines(progress_stream)],
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints)))
    results = tuner.fit()
    _close_stale_trials(out / "optuna.db")
    return results


def _max_flops(data, space: Space, epochs: float, model_kwargs: dict) -> float:
    """FLOPs of the full-resolution baseline over the epoch budget: ASHA's max_t."""
    import torch

    from .flops import train_flops
    from .transfer import build_for_phase
    with torch.device("meta"):  # only the shape matters for counting
        m = build_for_phase(space.model, {"num_classes": data.num_classes, **model_kwargs}, "none", 1,
                            data.fe.num_mel_bins, data.fe.target_length)
    n = len(data.features("train", data.fe.frame_shift_ms).kept)
    return float(train_flops(m) * n * epochs)


def _close_stale_trials(db: Path) -> None:
    """After fit() no trial runs: an Optuna trial still RUNNING lost its Tune trial (driver
    killed before Tune saved it); mark it FAIL so the study holds nothing stuck."""
    if not db.exists():
        return
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
