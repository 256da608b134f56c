"""``run_search``: checks everything, starts (or joins) Ray, runs the Tuner, resumes.

The study lives in ``DIR/optuna.db`` (SQLite) and Tune's experiment in ``DIR/search`` (or
``--storage``). Every check runs before Ray starts and before anything is written to ``DIR``,
so a search that fails before its first trial leaves ``DIR`` reusable.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from ray.tune import Callback

from ..errors import C2FError, Interrupted, SpaceError
from ..spaces import Space, load_space
from .schedulers import make_scheduler, population
from .searcher import METRICS, STUDY, C2FSearchGenerator, make_searcher
from .settings import SearchSettings

# Tune warns on every frequent checkpoint; a search checkpoints every epoch by design
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Tune saves its experiment state (which trials finished, each one's last checkpoint) and the trials'
# results into DIR/search at most every 10 s by default, and not on an interrupt; --resume then trains
# again what a driver learnt since, from each trial's last saved checkpoint (from scratch for a trial that
# started in between). Ctrl-C and SIGTERM end with a last save (_stop_cleanly); for a SIGKILL the window
# is 1 s (saving every second costs the driver 0.5% of a search's time: docs/benchmarks.md).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
EXPERIMENT = "search"
TUNER_FILE = "tuner.pkl"


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
    from ..config import TrainConfig
    from ..errors import ConfigError
    models = sorted({m for m, _, _ in space.variants()})
    for model in models:  # e.g. --depth for a model without depth: refused here, not in every trial
        try:
            TrainConfig("none:1x1", model=model, model_kwargs=settings.model_kwargs)
        except ConfigError as e:
            raise SpaceError(f"--{e.field.replace('_', '-')}: {e.problem}") from None
    for model, method, _ in sorted(space.variants()):
        family = get_family(model)
        if not family.supports(method):
            raise SpaceError(f"{space.path}: key '{'schedules' if space.is_grid else 'space.method'}': model "
                             f"{model} does not support {method!r}; choose from {', '.join(family.methods)}")
    quantum = max(space.max_C() * get_family(m).time_granularity for m in models)
    data = Data.from_specs(**settings.data, quantum=quantum, progress=progress,
                           test=settings.test)  # a bad --test split fails here too, before any trial
    fe = data.fe
    for model in models:
        try:
            check_geometry(space.probe_config(model), FrontEnd(**fe.key()),
                           sorted({C for m, _, C in space.variants() if m == model}))
        except C2FError as e:
            key = "schedules" if space.is_grid else "space.C_values"
            raise SpaceError(f"{space.path}: key '{key}' ({model}): {e}") from None
    for method, C in sorted(space.phase_variants()):
        from ..compress import get_method
        m = get_method(method)
        for split in ("train", "val"):
            data.features(split, m.frame_shift(fe.frame_shift_ms, C), m.feature_length(fe.target_length, C))
    if settings.finetune:  # the fixed fine-tune of a pretraining search reads its own data
        ft = Data.from_specs(**settings.finetune["data"], progress=progress)
        settings.finetune["data"].update(norm=[ft.mean, ft.std], target_length=ft.fe.target_length,
                                         num_mel_bins=ft.fe.num_mel_bins)
    return data


def resolve_data_args(data_spec: str, val, labels, task, skip_bad, norm, cache_dir, num_mel_bins,
                      target_length, features: str = "fp32", workers: int | None = None) -> dict:
    """Absolute paths and an explicit front end, so trials on any node and any cwd read the same data."""
    from .. import builtin
    reason = None
    if data_spec.startswith("builtin:"):
        root = builtin.materialize(data_spec)
        declared = builtin.FRONTEND
        if target_length is None:
            reason = f"the front end declared by {data_spec.split('?')[0]}"
        num_mel_bins = num_mel_bins or declared["num_mel_bins"]
        target_length = target_length or declared["target_length"]
        data_spec, val, labels = str(root / "train.json"), val or str(root / "val.json"), str(root / "class_labels_indices.csv")
    absp = lambda p: None if p is None else str(Path(p).resolve())  # noqa: E731
    return {"train": absp(data_spec), "val": absp(val), "labels": absp(labels), "task": task,
            "skip_bad": skip_bad, "norm": norm, "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
            "num_mel_bins": num_mel_bins, "target_length": target_length, "target_reason": reason,
            "features": features, "workers": workers}


def resolve_test_arg(spec: str | None) -> str | None:
    """--test as an absolute path (a built-in spec becomes its generated validation file)."""
    from .. import builtin
    if spec is None:
        return None
    if spec.startswith("builtin:"):
        return str(builtin.materialize(spec) / "val.json")
    return str(Path(spec).resolve())


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
    on_term = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise _unreachable(address, e) from None
    if callable(on_term) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)  # ray.init replaces it with an exit that skips the resume hint


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

    space = load_space(settings.space)
    out = Path(settings.out).resolve()
    exp_dir = experiment_dir(settings)
    can_restore = tune.Tuner.can_restore(exp_dir, storage_filesystem=storage_filesystem)  # reads only
    if resume and not can_restore:
        raise SpaceError(f"{exp_dir}: no search to resume; run without --resume")
    if not resume and can_restore:
        raise SpaceError(f"{exp_dir}: a search is already there; pass --resume to continue it or choose a new --out")
    if resume:
        _check_tuner_file(settings, exp_dir, storage_filesystem)
    data = prepare_data(settings, space)  # fails here, before Ray and before any file, on bad data or grids
    check_storage(out, settings.storage, storage_filesystem)
    settings.data.update(norm=[data.mean, data.std], target_length=data.fe.target_length,
                         num_mel_bins=data.fe.num_mel_bins)  # every trial reads the same
    settings.target_length_reason = settings.target_length_reason or data.target_reason
    epochs = settings.epochs or space.epochs
    trainable = make_trainable(settings, space)
    if not ray.is_initialized():
        connect_ray(address)
    out.mkdir(parents=True, exist_ok=True)
    searcher = None
    if resume:
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
        C2FSearchGenerator.resume_as = {"study": _study_storage(out), "trials": num_trials(settings, space),
                                        "experiment": _filesystem(settings.storage or str(out), storage_filesystem)}
    else:
        sched = make_scheduler(settings.scheduler, _max_flops(data, space, epochs, settings.model_kwargs), space,
                               epochs, settings.seed)
        if settings.scheduler == "pbt":  # Ray runs no search algorithm with PBT: members draw their values once
            from ray.tune.search import BasicVariantGenerator
            searcher, n, param_space = None, num_trials(settings, space), population(space, epochs)
            search_alg = BasicVariantGenerator(random_state=settings.seed)
        else:
            searcher = make_searcher(space, settings.sampler, settings.seed, epochs, _study_storage(out))
            n = num_trials(settings, space)
            param_space, search_alg = None, C2FSearchGenerator(searcher)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=sched, num_samples=n),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=settings.storage or str(out), storage_filesystem=storage_filesystem,
                # PBT clones a donor's checkpoint of its own choosing, maybe an older one: keep them all
                verbose=0, callbacks=[TrialLines(progress_stream)] + (
                    [KeepCheckpoints(settings.keep_checkpoints)]
                    if settings.keep_checkpoints and settings.scheduler != "pbt" else []),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures)))
        # Ray restores a search by unpickling DIR/search/tuner.pkl, which could run code: --resume checks
        # first that the file is the one written here
        settings.tuner_sha256 = _tuner_hash(exp_dir, storage_filesystem)
    settings.save()
    try:
        with _stop_cleanly():
            results = tuner.fit()
    finally:
        C2FSearchGenerator.resume_as = None
    _close_stale_trials(out / "optuna.db")
    exhausted = not resume and searcher is not None and searcher.exhausted
    if not resume and searcher is not None and searcher.repeats:
        print(f"{searcher.repeats} sampled configurations repeated one already trained (same schedule and "
              f"hyperparameters): not trained again, Optuna was told the first one's result", flush=True)
    if exhausted:
        print(f"the space holds only {len(results)} distinct configurations: all trained, the search ends here",
              flush=True)
    return results


def num_trials(settings: SearchSettings, space: Space) -> int:
    """Trials the search runs: --trials (default 12, 8 PBT members); a grid runs at most its whole grid."""
    if settings.scheduler == "pbt":
        return settings.trials or 8
    if space.is_grid and settings.sampler in ("auto", "grid"):
        return min(settings.trials or space.grid_size(), space.grid_size())
    return settings.trials or 12


def _study_storage(out: Path):
    return optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")


def _filesystem(path: str, filesystem=None):
    """(pyarrow filesystem, path in it) of a local path or URI."""
    import pyarrow.fs as pafs
    return (filesystem, path) if filesystem is not None else pafs.FileSystem.from_uri(path)


def _tuner_hash(exp_dir: str, filesystem=None) -> str:
    fs, root = _filesystem(exp_dir, filesystem)
    with fs.open_input_stream(f"{root.rstrip('/')}/{TUNER_FILE}") as f:
        return hashlib.sha256(f.readall()).hexdigest()


def _check_tuner_file(settings: SearchSettings, exp_dir: str, filesystem=None) -> None:
    """Refuse to unpickle a tuner.pkl that c2f-search did not write (its hash is in search.json). The
    other state files Ray reads on a resume change as the search runs and are not checked: a search
    folder is trusted like code (checkpoints are not: they load with weights_only=True)."""
    actual = _tuner_hash(exp_dir, filesystem)
    if settings.tuner_sha256 is None:
        raise SpaceError(f"{settings.out}/search.json: records no hash of {exp_dir}/{TUNER_FILE} (a folder of an "
                         f"older c2f-search, or not written by c2f-search); resuming unpickles that file, which can "
                         f"run code. If you made this folder, add \"tuner_sha256\": \"{actual}\" to search.json")
    if actual != settings.tuner_sha256:
        raise SpaceError(f"{exp_dir}/{TUNER_FILE}: not the file c2f-search wrote (its SHA-256 differs from the one in "
                         f"{settings.out}/search.json); resuming would unpickle it, which can run code, so it is "
                         f"refused. Resume only search folders you made")


@contextmanager
def _stop_cleanly():
    """Ctrl-C or SIGTERM during fit(): Tune ends its loop, saves its experiment state one last time (every
    result it has received, so no finished trial is trained again) and stops the trials; then the interrupt
    goes on as KeyboardInterrupt. Tune stops that way on SIGUSR1 (its handler, installed by fit()); before
    that handler exists, and on a second signal, the interrupt is raised at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []

    def stop(signum, frame):
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if caught or not callable(tune_stop):
            raise Interrupted(signum)
        caught.append(signum)
        tune_stop(signal.SIGUSR1, frame)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    for s in (signal.SIGINT, signal.SIGTERM):
        if before[s] is not signal.SIG_IGN:  # a search started in the background ignores Ctrl-C
            signal.signal(s, stop)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C stays with stop()
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if caught:
        raise Interrupted(caught[0])


def make_trainable(settings: SearchSettings, space: Space, metric_target="space"):
    """The trial function with the search's fixed parts (data, model, fixed settings) and resources."""
    from ray import tune

    from trainables import train_schedule
    target = settings.metric_target or space.metric_target if metric_target == "space" else metric_target
    setup = {"data": settings.data, "model": space.model, "fixed": space.fixed,
             "model_kwargs": settings.model_kwargs, "metric_target": target, "objective": space.objective,
             "finetune": settings.finetune, "budget": settings.epochs or space.epochs}
    res = {**space.resources, **{k: v for k, v in settings.resources.items() if v is not None}}
    return tune.with_resources(tune.with_parameters(train_schedule, setup=setup),
                               {"cpu": res.get("cpu", 1), "gpu": res.get("gpu", 0)})


class KeepCheckpoints(Callback):
    """Keeps every checkpoint the front may need (``records.keep_checkpoint``: phase ends and final-phase
    evaluations that beat all earlier ones, which include the paper's selected epochs) and the `keep`
    most recent others per trial, deleting the rest. Tune's own rotation keeps a count or the best by one
    score, neither of which is this set, so Tune keeps all and this callback does the rotation."""

    def __init__(self, keep: int):
        self.keep, self.others = keep, {}

    def __getstate__(self):  # pickled with Tune's experiment state; filesystems need not pickle
        return {"keep": self.keep, "others": {}}

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if (trial.last_result or {}).get("checkpoint_needed"):  # the result this checkpoint came with
            return
        q = self.others.setdefault(trial.trial_id, [])
        q.append(checkpoint)
        while len(q) > self.keep:
            old = q.pop(0)
            old.filesystem.delete_dir(old.path)


def _max_flops(data, space: Space, epochs: float, model_kwargs: dict) -> float:
    """FLOPs of the costliest model's full-resolution baseline over the epoch budget: ASHA's max_t."""
    from ..flops import train_flops
    from ..geometry import Geometry
    from ..models import create_model
    fe = data.fe
    flops = max(train_flops(create_model(m, geometry=Geometry(fe.num_mel_bins, fe.target_length), device="meta",
                                         num_classes=data.num_classes, **model_kwargs))
                for m in {m for m, _, _ in space.variants()})
    n = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    return float(flops * n * epochs)


def _close_stale_trials(db: Path) -> None:
    """After fit() no trial runs: an Optuna trial still RUNNING lost its Tune trial (driver
    killed before Tune saved it); mark it FAIL so the study holds nothing stuck. The objectives are
    named, so optuna-dashboard shows val_metric and train_flops."""
    if not db.exists():
        return
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    with warnings.catch_warnings():  # experimental in Optuna, and only a label
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
