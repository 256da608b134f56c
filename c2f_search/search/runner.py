"""``run_search``: checks everything, starts (or joins) Ray, runs the Tuner, resumes.

The study lives in ``DIR/optuna.db`` (SQLite) and Tune's experiment in ``DIR/search`` (or
``--storage``). Every check runs before Ray starts and before anything is written to ``DIR``,
so a search that fails before its first trial leaves ``DIR`` reusable.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import optuna
from ray.tune import Callback

from ..errors import C2FError, SpaceError
from ..spaces import Space, load_space
from .schedulers import make_scheduler
from .searcher import STUDY, make_searcher
from .settings import SearchSettings

# Tune warns on every frequent checkpoint; a search checkpoints every epoch by design
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
EXPERIMENT = "search"


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
    """Check the data and every reachable schedule against its token grid, and extract every
    (frame shift, length) a trial may read, once, in the driver."""
    from ..data import Data
    from ..frontend import FrontEnd
    from ..models import get_family
    from ..train import check_geometry
    family = get_family(space.model)
    for m in space.methods_used():
        if not family.supports(m):
            raise SpaceError(f"{space.path}: key '{'schedules' if space.is_grid else 'space.method'}': model "
                             f"{space.model} does not support {m!r}; choose from {', '.join(family.methods)}")
    data = Data.from_specs(**settings.data, quantum=space.max_C() * family.time_granularity, progress=progress)
    fe = data.fe
    try:
        check_geometry(space.probe_config(), FrontEnd(**fe.key()), sorted(space.Cs_used()))
    except C2FError as e:
        key = "schedules" if space.is_grid else "space.C_values"
        raise SpaceError(f"{space.path}: key '{key}': {e}") from None
    for method, C in sorted(space.phase_variants()):
        from ..compress import get_method
        m = get_method(method)
        for split in ("train", "val"):
            data.features(split, m.frame_shift(fe.frame_shift_ms, C), m.feature_length(fe.target_length, C))
    return data


def resolve_data_args(data_spec: str, val, labels, task, skip_bad, norm, cache_dir, num_mel_bins,
                      target_length, features: str = "fp32", workers: int | None = None) -> dict:
    """Absolute paths and an explicit front end, so trials on any node and any cwd read the same data."""
    from .. import builtin
    if data_spec.startswith("builtin:"):
        root = builtin.materialize(data_spec)
        declared = builtin.FRONTEND
        num_mel_bins = num_mel_bins or declared["num_mel_bins"]
        target_length = target_length or declared["target_length"]
        data_spec, val, labels = str(root / "train.json"), val or str(root / "val.json"), str(root / "class_labels_indices.csv")
    absp = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
    return {"train": absp(data_spec), "val": absp(val), "labels": absp(labels), "task": task,
            "skip_bad": skip_bad, "norm": norm, "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
            "num_mel_bins": num_mel_bins, "target_length": target_length, "features": features, "workers": workers}


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
    """Fail before any trial when results cannot be written (writes nothing that stays)."""
    import pyarrow.fs as pafs
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
        if created:  # nothing stays behind for a search that never starts
            out.rmdir()
    except OSError as e:
        raise SpaceError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    if storage or filesystem is not None:
        try:
            fs, root = (filesystem, storage or "") if filesystem is not None else pafs.FileSystem.from_uri(storage)
            fs.create_dir(f"{root.rstrip('/')}/search" if root else "search", recursive=True)
        except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... for bad URIs and credentials
            raise SpaceError(f"--storage {storage}: cannot write there ({e}); check the URI and credentials") from None


def experiment_dir(settings: SearchSettings) -> str:
    return f"{(settings.storage or str(Path(settings.out).resolve())).rstrip('/')}/{EXPERIMENT}"


def run_search(settings: SearchSettings, resume: bool = False, address: str | None = None,
               progress_stream=None, storage_filesystem=None):
    """Run (or resume) a search; returns Tune's ResultGrid."""
    import ray
    from ray import tune

    from trainables import train_schedule

    space = load_space(settings.space)
    out = Path(settings.out).resolve()
    exp_dir = experiment_dir(settings)
    data = prepare_data(settings, space)  # fails here, before Ray and before any file, on bad data or grids
    check_storage(out, settings.storage, storage_filesystem)
    can_restore = tune.Tuner.can_restore(exp_dir, storage_filesystem=storage_filesystem)
    if resume and not can_restore:
        raise SpaceError(f"{exp_dir}: no search to resume; run without --resume")
    if not resume and can_restore:
        raise SpaceError(f"{exp_dir}: a search is already there; pass --resume to continue it or choose a new --out")
    settings.data.update(norm=[data.mean, data.std], target_length=data.fe.target_length,
                         num_mel_bins=data.fe.num_mel_bins)  # every trial reads the same
    settings.target_length_reason = settings.target_length_reason or data.target_reason
    epochs = settings.epochs or space.epochs
    setup = {"data": settings.data, "model": space.model, "fixed": space.fixed,
             "model_kwargs": settings.model_kwargs, "metric_target": settings.metric_target or space.metric_target}
    res = {**space.resources, **{k: v for k, v in settings.resources.items() if v is not None}}
    trainable = tune.with_resources(tune.with_parameters(train_schedule, setup=setup),
                                    {"cpu": res.get("cpu", 1), "gpu": res.get("gpu", 0)})
    if not ray.is_initialized():
        connect_ray(address)
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    else:
        searcher = make_searcher(space, settings.sampler, settings.seed, epochs,
                                 optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}"))
        grid_mode = space.is_grid and settings.sampler in ("auto", "grid")
        n = min(settings.trials or len(space.grid()), len(space.grid())) if grid_mode else (settings.trials or 12)
        sched = make_scheduler(settings.scheduler, _max_flops(data, space, epochs, settings.model_kwargs))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=sched, num_samples=n),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=settings.storage or str(out), storage_filesystem=storage_filesystem,
                verbose=0, callbacks=[TrialLines(progress_stream)],
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints)))
    settings.save()
    results = tuner.fit()
    _close_stale_trials(out / "optuna.db")
    if results.num_terminated + results.num_errors < len(results) or (not resume and len(results) < n):
        raise KeyboardInterrupt  # Tune caught Ctrl-C, saved its state and stopped: say so, and how to resume
    return results


def _max_flops(data, space: Space, epochs: float, model_kwargs: dict) -> float:
    """FLOPs of the full-resolution baseline over the epoch budget: ASHA's max_t."""
    from ..flops import train_flops
    from ..geometry import Geometry
    from ..models import create_model
    fe = data.fe
    m = create_model(space.model, geometry=Geometry(fe.num_mel_bins, fe.target_length), device="meta",
                     num_classes=data.num_classes, **model_kwargs)
    n = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    return float(train_flops(m) * n * epochs)


def _close_stale_trials(db: Path) -> None:
    """After fit() no trial runs: an Optuna trial still RUNNING lost its Tune trial (driver
    killed before Tune saved it); mark it FAIL so the study holds nothing stuck."""
    if not db.exists():
        return
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
