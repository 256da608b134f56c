"""``run_search``: checks everything, starts (or joins) Ray, runs the Tuner, resumes.

The study lives in ``DIR/optuna.db`` (SQLite) and Tune's experiment in ``DIR/search`` (or
``--storage``). Every check runs before Ray starts and before anything is written to ``DIR``,
so a search that fails before its first trial leaves ``DIR`` reusable.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import optuna
from ray.tune import Callback

from ..compress import get_method
from ..config import TrainConfig
from ..errors import C2FError, ConfigError, Interrupted, ScheduleError, SpaceError
from ..geometry import Geometry
from ..layout import SearchDir
from ..models import get_family
from ..settings import SearchSettings, flag
from ..validate import check_against_data, validate
from . import warm_start
from .schedulers import make_scheduler, population
from .searcher import METRICS, C2FSearchGenerator, load_study, make_searcher
from .space import Space, load_space

# Tune warns on every frequent checkpoint; a search checkpoints every epoch by design
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Tune saves its experiment state (which trials finished, each one's last checkpoint) and the trials'
# results into DIR/search at most every 10 s by default, and not on an interrupt; --resume then trains
# again what a driver learnt since, from each trial's last saved checkpoint (from scratch for a trial that
# started in between). Ctrl-C and SIGTERM end with a last save (_stop_cleanly); for a SIGKILL the window
# is 1 s (saving every second costs the driver 0.5% of a search's time: docs/benchmarks.md).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


class TrialLines(Callback):
    """One line per result, per finished and per failed trial."""

    def __init__(self, stream=None):
        self.stream, self.t0 = stream, time.time()

    def __getstate__(self):  # Tune pickles callbacks with its experiment state; streams do not pickle
        return {"stream": None, "t0": self.t0}

    def _p(self, text):
        print(f"[{time.time() - self.t0:6.0f}s] {text}", file=self.stream or sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._p(
            f"{trial.trial_id:<14} {result.get('schedule', ''):<30} phase {result.get('phase')} "
            f"C={result.get('C')} epoch {result.get('epoch', 0):5.2f}  "
            f"{result.get('metric_name', 'metric')}={result.get('val_metric', float('nan')):.3f}  "
            f"{result.get('train_flops', 0) / 1e12:8.2f} TFLOPs"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        self._p(f"{trial.trial_id:<14} {'finished' if r.get('schedule_done') else 'stopped early (pruned)'}")

    def on_trial_error(self, iteration, trials, trial, **info):
        import pyarrow.fs as pafs

        from ..analysis.rows import trial_error

        try:
            why = f"{trial_error(pafs.LocalFileSystem(), os.path.dirname(trial.error_file))} ({trial.error_file})"
        except (OSError, TypeError):  # no error file (yet)
            why = "see its error.txt"
        self._p(f"{trial.trial_id:<14} FAILED: {why}")


def prepare_data(settings: SearchSettings, space: Space, progress=True):
    """Every check a trial would make, once, in the driver, before Ray starts: the models' settings, each
    method against its model, the data, the token grid of every reachable schedule, every setting a trial
    may get against the data (``validate.check_against_data``, as ``Run`` does) and a pretraining search's
    fine-tune. Extracts every (frame shift, length) a trial may read. Returns the data."""
    models = sorted({m for m, _, _ in space.variants()})
    _check_models(settings, space, models)
    quantum = max(get_family(m).quantum([space.max_C()]) for m in models)
    data = settings.data.load(quantum=quantum, progress=progress, test=settings.test)  # a bad --test fails here too
    _check_grids(space, models, data)
    _extract(space, data)
    _check_trial_configs(settings, space, data)
    _check_phase_lengths(settings, space, data)
    check_init(settings, models, Geometry(data.fe.num_mel_bins, data.fe.target_length), data.num_classes)
    if settings.finetune:
        _check_finetune(settings, space, models, progress)
    return data


def check_init(settings: SearchSettings, models: list[str], geometry: Geometry, num_classes: int) -> None:
    """The init is readable here and is the file the search recorded; each model takes it or is of another
    family (its trials start from random weights, said in a line); one of the init's family whose weights do
    not fit is refused, naming the model and the first mismatched shape. Records the models it fits."""
    from ..models import create_model
    from ..models.pretrained import InitError, InitFile, InitMismatch, InitNotForFamily

    if not settings.init:
        return
    init = InitFile.to_read(settings.init)
    try:
        local = init.local()
    except InitError as e:
        raise SpaceError(str(e)) from None
    fits = []
    for m in models:
        family = get_family(m)
        kwargs = {k: v for k, v in settings.model_kwargs.items() if k in {st.name for st in family.settings}}
        model = create_model(m, geometry=geometry, num_classes=num_classes, **kwargs)
        try:
            family.load_init(model, local)
            fits.append(m)
        except InitNotForFamily as e:
            print(f"{m}: its trials start from random weights, the init is not for it ({e})", flush=True)
        except InitMismatch as e:
            raise SpaceError(f"{m}: {e}") from None
        except C2FError as e:
            raise SpaceError(str(e)) from None
    if not fits:
        raise SpaceError(f"--init {init.uri}: initialises none of the models {', '.join(models)}")
    settings.init = {**settings.init, "models": fits}


def _check_models(settings: SearchSettings, space: Space, models: list[str]) -> None:
    """The model settings given fit every model (e.g. --depth for a model without depth), and every method
    of the space is one its model can train: refused here, not in every trial."""
    for model in models:
        try:
            validate(TrainConfig("none:1x1", model=model, model_kwargs=settings.model_kwargs))
        except ConfigError as e:
            raise SpaceError(f"{flag(e.field)}: {e.problem}") from None
    for model, method, _ in sorted(space.variants()):
        try:
            get_family(model).check_method(model, get_method(method))
        except C2FError as e:
            key = "schedules" if space.is_grid else "space.method" if method in space.methods else "space.later_method"
            raise SpaceError(f"{space.path}: key '{key}': {e}") from None


def _check_grids(space: Space, models: list[str], data) -> None:
    """Every C a model may train at (but a token-dropping phase's) divides its full-resolution time tokens."""
    fe = data.fe
    for model in models:
        Cs = sorted({C for m, meth, C in space.variants() if m == model and not get_method(meth).drops_tokens})
        try:
            get_family(model).check_geometry(model, Geometry(fe.num_mel_bins, fe.target_length), Cs)
        except C2FError as e:
            key = "schedules" if space.is_grid else "space.C_values"
            raise SpaceError(f"{space.path}: key '{key}' ({model}): {e}") from None


def _extract(space: Space, data) -> None:
    """The features of every (method, C) a trial may train at, extracted once here, not in each trial."""
    fe = data.fe
    for method, C in sorted(space.phase_variants()):
        m = get_method(method)
        for split in ("train", "val"):
            data.features(split, m.frame_shift(fe.frame_shift_ms, C), m.feature_length(fe.target_length, C))


def _check_trial_configs(settings: SearchSettings, space: Space, data) -> None:
    for keys, cfg in space.trial_configs(settings.model_kwargs):  # what fails in every trial fails here, once
        try:
            check_against_data(cfg, data)
        except ConfigError as e:
            raise SpaceError(
                f"{space.path}: key '{keys.get(e.field, f'fixed.{e.field}')}' ({cfg.model}): {e.problem}"
            ) from None


def _shortest_phase(space: Space, E: float) -> float:
    """The shortest fixed phase, in epochs, a trial of `space` may get at `E` epochs."""
    if space.is_grid:  # unrounded: a phase the grid's rounding would make 0 epochs is reported, not raised
        fixed = [p.epochs * E / s.total_epochs for s in space.schedules if not s.is_adaptive for p in s.phases]
        return min(fixed, default=E)  # a learned phase's length is the controller's
    if space.is_adaptive:
        return space.final_fraction[0] * E
    lo, hi = space.phase_fraction
    k = space.coarse_phases[1]
    coarse = lo * min(1.0, space.max_coarse_fraction / (k * hi)) if k else 1.0
    return E * min(coarse, 1 - space.max_coarse_fraction if k else 1.0)


def _check_phase_lengths(settings: SearchSettings, space: Space, data) -> None:
    """Every phase a trial may get is at least one optimizer step at the largest batch a trial may get."""
    E = settings.epochs or space.epochs
    fe = data.fe
    n = len(data.features("train", fe.frame_shift_ms, fe.target_length).kept)
    batch = max(cfg.batch_size for _, cfg in space.trial_configs(settings.model_kwargs))
    spe, shortest = max(1, n // batch), _shortest_phase(space, E)
    if shortest < max(0.5 / spe, 5e-4):
        if space.path.startswith("confirm --target"):  # a target's budget: --epochs or --epochs-factor
            where = f"{space.path}: its budget of {E:g} epochs (--epochs, --epochs-factor)"
        else:
            where = f"--epochs {E:g}" if settings.epochs else f"{space.path}: key 'epochs' ({E:g})"
        raise SpaceError(
            f"{where}: a trial's shortest phase would be {shortest:.3g} epochs, less than one optimizer step "
            f"({spe} steps per epoch at batch {batch}); give at least {E * max(0.5 / spe, 5e-4) / shortest:.3g} epochs"
        )


def _check_finetune(settings: SearchSettings, space: Space, models: list[str], progress: bool) -> None:
    """The fixed fine-tune of a pretraining search reads its own data: every model's fine-tune fits it."""
    spec = settings.finetune
    ft = spec["data"].load(progress=progress)
    for model in models:
        family = get_family(model)
        try:
            cfg = TrainConfig(
                spec["schedule"],
                model=model,
                **spec["fixed"],
                model_kwargs={
                    k: v for k, v in settings.model_kwargs.items() if k in {st.name for st in family.settings}
                },
            )
            family.check_geometry(model, Geometry(ft.fe.num_mel_bins, ft.fe.target_length), cfg.schedule.grid_Cs)
            check_against_data(cfg, ft)
        except ConfigError as e:
            raise SpaceError(f"{space.path}: key 'finetune.fixed.{e.field}' ({model}): {e.problem}") from None
        except ScheduleError as e:
            raise SpaceError(f"{space.path}: key 'finetune.schedule' ({model}): {e}") from None
    spec["data"] = spec["data"].with_data(ft)


def _unreachable(address: str, why) -> SpaceError:
    return SpaceError(
        f"--address {address}: cannot reach a Ray cluster ({why}); start one with 'ray start --head' "
        f"or 'ray up cluster.yaml', or drop --address to run locally"
    )


@contextmanager
def ray_session():
    """One command's use of Ray: the local instance it started (or its connection to a cluster) ends with
    the command, not at interpreter exit."""
    import ray

    try:
        yield
    finally:
        ray.shutdown()


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


def run_search(
    settings: SearchSettings,
    resume: bool = False,
    address: str | None = None,
    progress_stream=None,
    storage_filesystem=None,
):
    """Run (or resume) a search: preflight (every check, before Ray starts and before anything is written),
    connect, build the Tuner (or restore it), fit, summarize. Returns Tune's ResultGrid."""
    import ray

    space = load_space(settings.space, settings.recipe)
    folder = SearchDir(Path(settings.out).resolve())
    data = _preflight(settings, space, folder, resume, storage_filesystem)
    # earlier searches, read and checked before Ray starts; imported once, when the search is built
    earlier = []
    if settings.warm_start and not resume:
        earlier = warm_start.read(settings.warm_start, settings, space, settings.epochs or space.epochs)
    if address is None and not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):  # a local instance
        check_fits(_asked(settings, space), [_this_machine()], "this machine")
    if not ray.is_initialized():
        connect_ray(address)
    resources = trial_resources(settings, space, joined=address is not None)
    if address is not None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")] + _autoscaler_types(AUTOSCALER_CONFIG)
        check_fits(resources, nodes, "any node of the cluster (or a node type its autoscaler may start)")
    trainable = make_trainable(settings, space, resources)
    folder.path.mkdir(parents=True, exist_ok=True)
    if resume:
        tuner, searcher = _restore(settings, space, folder, trainable, storage_filesystem), None
    else:
        tuner, searcher = _build(settings, space, folder, trainable, data, progress_stream, storage_filesystem)
        warm_start.apply(earlier, searcher, folder)
        settings.warm_start = [w.record() for w in earlier] or None
    settings.save()
    try:
        with _stop_cleanly():
            results = tuner.fit()
    finally:
        C2FSearchGenerator.resume_as = None
    _close_stale_trials(folder.study)
    _summarize(results, searcher)
    return results


def _preflight(settings: SearchSettings, space: Space, folder: SearchDir, resume: bool, filesystem, write=True):
    """What must hold before Ray starts: a search to resume (its Tune state the one written here, its study
    there) or none in the way, the data and every trial's settings, a writable output (not checked by a dry
    run, which writes nothing there). Returns the data, and records what it resolved (normalization, front
    end) so that every trial reads the same."""
    from ray import tune

    exp_dir = folder.experiment(settings.storage)
    can_restore = tune.Tuner.can_restore(exp_dir, storage_filesystem=filesystem)  # reads only
    if resume and not can_restore:
        raise SpaceError(f"{exp_dir}: no search to resume; run without --resume")
    if not resume and can_restore:
        raise SpaceError(f"{exp_dir}: a search is already there; pass --resume to continue it or choose a new --out")
    if resume:
        _check_tuner_file(settings, folder, filesystem)
        check_state_files(exp_dir, filesystem, folder.path)
        if settings.scheduler != "pbt":  # the sampler's study must be there to go on
            load_study(folder.study)
    data = prepare_data(settings, space)  # fails here, before Ray and before any file, on bad data or grids
    if write:
        check_storage(folder.path, settings.storage, filesystem)
    settings.data = settings.data.with_data(data)
    settings.target_length_reason = settings.target_length_reason or data.target_reason
    return data


def plan_search(settings: SearchSettings, resume: bool = False, address: str | None = None) -> dict:
    """What a search would do (--dry-run), checked as `run_search` checks it, with no Ray started and nothing
    written to its folder: the settings, one trial's resources, the number of trials and the training FLOPs
    they spend at most (the FLOPs ledger's planned totals). Prints it and returns it."""
    space = load_space(settings.space, settings.recipe)
    folder = SearchDir(Path(settings.out).resolve())
    data = _preflight(settings, space, folder, resume, None, write=False)
    asked = _asked(settings, space)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        check_fits(asked, [_this_machine()], "this machine")
    n, epochs = num_trials(settings, space), settings.epochs or space.epochs
    per_trial = planned_flops(space, data, epochs, settings.model_kwargs)
    if space.is_grid and settings.sampler in ("auto", "grid"):  # n of the grid's entries: the n costliest
        total, how = sum(sorted(per_trial, reverse=True)[:n]), "the grid's schedules, each as planned"
    else:
        total, how = n * max(per_trial), "each trial at most the costliest full-resolution baseline of its budget"
    done = _trials_so_far(folder) if resume else {}
    given_gpu = settings.resources.get("gpu")
    gpu = "auto" if given_gpu is None and space.resources["gpu"] == "auto" else asked["gpu"]
    plan = {
        "out": settings.out,
        "resume": resume,
        "space": settings.space,
        "data": settings.data.train,
        "models": ", ".join(space.models),
        "sampler": settings.sampler,
        "scheduler": settings.scheduler,
        "epochs": epochs,
        "trials": n,
        "trials_so_far": done,
        "resources_per_trial": {"cpu": asked["cpu"], "gpu": gpu},
        "train_flops_at_most": total,
        "init": (settings.init or {}).get("uri") or "none (random weights)",
        "recipe": settings.recipe or "none",
        "model_kwargs": settings.model_kwargs or "the models' defaults",
        "storage": settings.storage or str(folder.path),
    }
    left = n - sum(done.values()) + done.get("running", 0) + done.get("error", 0)
    print(f"dry run: {'resume' if resume else 'start'} the search in {settings.out} (nothing started, nothing written)")
    plan["trackers"] = (
        ", ".join(f"{t['kind']} ({t['target']})" if t["target"] else t["kind"] for t in settings.trackers) or "none"
    )
    for k in (
        "space",
        "data",
        "models",
        "init",
        "recipe",
        "model_kwargs",
        "sampler",
        "scheduler",
        "epochs",
        "storage",
        "trackers",
    ):
        print(f"  {k:<19} {plan[k]}")
    gpus = "1 GPU where the cluster has GPUs, else 0 (auto)" if gpu == "auto" else f"{gpu:g} GPU"
    print(f"  {'per trial':<19} {asked['cpu']:g} CPU, {gpus}")
    if resume:
        so_far = ", ".join(f"{v} {k}" for k, v in sorted(done.items())) or "none reported"
        print(f"  {'trials':<19} {n} ({so_far}); the resume trains at most {max(0, left)} more")
    else:
        print(f"  {'trials':<19} {n}")
    print(f"  {'train FLOPs':<19} at most {total:.3g} ({how})")
    if space.controllers:
        print("  (a learned schedule's probes count in its train FLOPs and may add to this bound)")
    return plan


def planned_flops(space: Space, data, epochs: float, model_kwargs: dict) -> list[float]:
    """Each grid schedule's planned training FLOPs (the ledger's count, its phases as planned), in grid order;
    an open space's one bound per trial, the costliest full-resolution baseline of the budget (`max_flops`)."""

    if not space.is_grid:
        return [max_flops(data, space, epochs, model_kwargs)]
    n, out = len(space.schedules), []
    for text, model, own in zip(space.grid(epochs), space.grid_models or [None] * n, space.grid_fixed or [{}] * n):
        schedule = text.split(" ", 1)[-1] if model else text
        for m in [model] if model else space.models:
            settings = {**space.fixed, **own}
            cfg = TrainConfig(schedule, model=m, model_kwargs=model_kwargs, objective=space.objective, **settings)
            out.append(planned_run_flops(cfg, data, epochs))
    return out


def planned_run_flops(cfg: TrainConfig, data, budget: float) -> float:
    """One run's training FLOPs as the ledger counts them, its phases as planned; a schedule with a learned
    phase is bounded by the full-resolution baseline over its `budget` of epochs."""
    from ..compress import baseline_method
    from ..train.ledger import FlopsLedger

    ledger, phases = FlopsLedger.for_config(cfg, data), cfg.schedule.phases
    if any(p.epochs is None for p in phases):
        return ledger.epoch_flops(1, baseline_method()) * budget
    return ledger.planned_train_flops()


def _trials_so_far(folder: SearchDir) -> dict:
    """{status: trials} of the search in `folder` (finished, pruned, running, error), from its rows."""
    from ..analysis.rows import load_rows
    from ..errors import NoResults

    try:
        table = load_rows(folder.path)
    except NoResults:
        return {}
    last = dict(zip(table.column("trial_id").to_pylist(), table.column("status").to_pylist()))
    out = {}
    for status in last.values():
        out[status] = out.get(status, 0) + 1
    return out


def _restore(settings: SearchSettings, space: Space, folder: SearchDir, trainable, filesystem):
    from ray import tune

    exp_dir = folder.experiment(settings.storage)
    try:
        tuner = tune.Tuner.restore(
            exp_dir, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        )
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as e:
        raise SpaceError(
            f"{folder.tuner_file(exp_dir)}: Tune's state of the search cannot be read ({e}), so the "
            f"search cannot be resumed; 'c2f-search pareto {folder.path}' still reads its results, or "
            f"start a new search in another --out"
        ) from None
    C2FSearchGenerator.resume_as = {
        "study": _study_storage(folder),
        "trials": num_trials(settings, space),
        "experiment": _filesystem(settings.storage or str(folder.path), filesystem),
    }
    return tuner


def _build(settings: SearchSettings, space: Space, folder: SearchDir, trainable, data, progress_stream, filesystem):
    """A new Tuner: the scheduler, the searcher (none with PBT), the callbacks; (tuner, searcher)."""
    from ray import tune

    epochs = settings.epochs or space.epochs
    sched = make_scheduler(
        settings.scheduler, max_flops(data, space, epochs, settings.model_kwargs), space, epochs, settings.seed
    )
    n = num_trials(settings, space)
    if settings.scheduler == "pbt":  # Ray runs no search algorithm with PBT: members draw their values once
        from ray.tune.search import BasicVariantGenerator

        searcher, param_space = None, population(space, epochs)
        search_alg = BasicVariantGenerator(random_state=settings.seed)
    else:
        searcher = make_searcher(space, settings.sampler, settings.seed, epochs, _study_storage(folder))
        param_space, search_alg = None, C2FSearchGenerator(searcher)
    callbacks = [TrialLines(progress_stream)]
    if settings.keep_checkpoints and settings.scheduler != "pbt":
        # PBT clones a donor's checkpoint of its own choosing, maybe an older one: it keeps them all
        callbacks.append(KeepCheckpoints(settings.keep_checkpoints))
    if settings.trackers:  # Tune pickles them with the Tuner: a resumed search logs to the same runs
        from .trackers import start_parent, tune_callbacks

        settings.trackers = start_parent(settings.trackers, settings.out, _parent_params(settings, space, n))
        callbacks += tune_callbacks(settings.trackers, settings.out, shared_params(settings, space))
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=sched, num_samples=n, reuse_actors=settings.reuse_actors
        ),
        run_config=tune.RunConfig(
            name=SearchDir.EXPERIMENT,
            storage_path=settings.storage or str(folder.path),
            storage_filesystem=filesystem,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )
    # Ray restores a search by unpickling its tuner.pkl, which could run code: --resume checks first that the
    # file is the one written here
    settings.tuner_sha256 = _tuner_hash(folder, folder.experiment(settings.storage), filesystem)
    return tuner, searcher


def shared_params(settings: SearchSettings, space: Space) -> dict:
    """The settings every trial shares, as a tracker's parameters: the space's fixed values over the defaults,
    the model and its settings."""
    cfg = space.probe_config().to_dict()
    cfg.pop("schedule", None)
    return {**cfg, **{f"model.{k}": v for k, v in (settings.model_kwargs or {}).items()}}


def _parent_params(settings: SearchSettings, space: Space, n: int) -> dict:
    return {
        "space": settings.space, "data": settings.data.train, "models": ",".join(space.models), "trials": n,
        "sampler": settings.sampler, "scheduler": settings.scheduler, "epochs": settings.epochs or space.epochs,
        "init": (settings.init or {}).get("uri"), "recipe": settings.recipe, "seed": settings.seed,
    }  # fmt: skip


def _summarize(results, searcher) -> None:
    """What the searcher left out: configurations that repeated one already trained, an exhausted space."""
    if searcher is not None and searcher.repeats:
        print(
            f"{searcher.repeats} sampled configurations repeated one already trained (same schedule and "
            f"hyperparameters): not trained again, Optuna was told the first one's result",
            flush=True,
        )
    if searcher is not None and searcher.exhausted:
        print(
            f"the space holds only {len(results)} distinct configurations: all trained, the search ends here",
            flush=True,
        )


def num_trials(settings: SearchSettings, space: Space) -> int:
    """Trials the search runs: --trials (default 12, 8 PBT members); a grid runs at most its whole grid."""
    if settings.scheduler == "pbt":
        return settings.trials or 8
    if space.is_grid and settings.sampler in ("auto", "grid"):
        return min(settings.trials or space.grid_size(), space.grid_size())
    return settings.trials or 12


def _study_storage(folder: SearchDir):
    return optuna.storages.RDBStorage(folder.study_url())


def _filesystem(path: str, filesystem=None):
    """(pyarrow filesystem, path in it) of a local path or URI."""
    import pyarrow.fs as pafs

    return (filesystem, path) if filesystem is not None else pafs.FileSystem.from_uri(path)


def _tuner_hash(folder: SearchDir, exp_dir: str, filesystem=None) -> str:
    fs, root = _filesystem(exp_dir, filesystem)
    with fs.open_input_stream(folder.tuner_file(root)) as f:
        return hashlib.sha256(f.readall()).hexdigest()


def check_state_files(exp_dir: str, filesystem=None, out=None) -> None:
    """The files Tune reads on a restore are whole: the newest state of each kind parses as JSON or is a complete
    pickle (its opcodes read without running anything), as is each .pkl; else one line naming the file."""
    import json
    import pickletools

    import pyarrow.fs as pafs

    fs, root = _filesystem(exp_dir, filesystem)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.type == pafs.FileType.File)
    newest = {}  # Tune reads the newest of each kind of JSON state
    for p in files:
        if p.endswith(".json") and "-" in Path(p).name:
            newest[Path(p).name.split("-")[0]] = p
    pickles = [p for p in files if p.endswith(".pkl") and Path(p).name != SearchDir.TUNER_FILE]
    for path in [*newest.values(), *pickles]:
        try:
            with fs.open_input_stream(path) as f:
                data = f.readall()
            if data[:1] == b"\x80":  # a pickle (Tune pickles some of its .json states too)
                for _ in pickletools.genops(data):
                    pass
            else:
                json.loads(data)
        except (ValueError, OSError, EOFError) as e:
            raise SpaceError(
                f"{path}: Tune's state of the search is damaged ({str(e)[:80]}), so the search cannot be "
                f"resumed; 'c2f-search pareto {out}' still reads its results, or start a new search in another --out"
            ) from None


def _check_tuner_file(settings: SearchSettings, folder: SearchDir, filesystem=None) -> None:
    """Refuse to unpickle a tuner.pkl that c2f-search did not write (its hash is in search.json). The
    other state files Ray reads on a resume change as the search runs and are not checked: a search
    folder is trusted like code (checkpoints are not: they load with weights_only=True)."""
    exp_dir = folder.experiment(settings.storage)
    actual = _tuner_hash(folder, exp_dir, filesystem)
    if settings.tuner_sha256 is None:
        raise SpaceError(
            f"{folder.settings}: records no hash of {folder.tuner_file(exp_dir)} (a folder of an "
            f"older c2f-search, or not written by c2f-search); resuming unpickles that file, which can "
            f'run code. If you made this folder, add "tuner_sha256": "{actual}" to '
            f"{folder.settings.name}"
        )
    if actual != settings.tuner_sha256:
        raise SpaceError(
            f"{folder.tuner_file(exp_dir)}: not the file c2f-search wrote (its SHA-256 differs from the "
            f"one in {folder.settings}); resuming would unpickle it, which can run code, so it is "
            f"refused. Resume only search folders you made"
        )


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


def make_trainable(settings: SearchSettings, space: Space, resources: dict, metric_target="space"):
    """The trial function with the search's fixed parts (data, model, fixed settings) and `resources`
    (``trial_resources``)."""
    from ray import tune

    from trainables import train_schedule

    return tune.with_resources(
        tune.with_parameters(train_schedule, setup=trial_setup(settings, space, metric_target)), resources
    )


def trial_setup(settings: SearchSettings, space: Space, metric_target="space") -> dict:
    """What every trial of a search (or confirm) shares: the data, the model, the fixed settings, the init."""
    target = settings.metric_target or space.metric_target if metric_target == "space" else metric_target
    return {
        "data": settings.data,
        "model": space.model,
        "fixed": space.fixed,
        "model_kwargs": settings.model_kwargs,
        "metric_target": target,
        "objective": space.objective,
        "finetune": settings.finetune,
        "budget": settings.epochs or space.epochs,
        "init": settings.init,
    }


AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")  # where `ray up` leaves the autoscaler's config, on the head


def trial_resources(settings: SearchSettings, space: Space, joined: bool, autoscaler_config=AUTOSCALER_CONFIG) -> dict:
    """One trial's {cpu, gpu}, once Ray runs: --cpus/--gpus-per-trial, else the space's ``resources``. A gpu of
    ``auto`` is one GPU where the cluster has GPUs (on its nodes now or, for a cluster that was `joined`, in
    a node type its autoscaler may start) and none where it has none. Prints the choice in one line."""
    import ray

    res = {**space.resources, **{k: v for k, v in settings.resources.items() if v is not None}}
    if settings.resources.get("gpu") is not None:
        why = "--gpus-per-trial"
    elif res["gpu"] != "auto":
        why = f"resources.gpu in {space.path}"
    else:
        now = ray.cluster_resources().get("GPU", 0)
        later = _autoscaler_gpus(Path(autoscaler_config).expanduser()) if joined and not now else 0
        res["gpu"] = 1 if now or later else 0
        why = "resources.gpu auto: " + (
            f"the cluster has {now:g} GPUs"
            if now
            else "node types its autoscaler may start have GPUs"
            if later
            else "the cluster has no GPU"
        )
    print(
        f"trials get {res['gpu']:g} GPU and {res['cpu']:g} CPU each ({why}; change it with --gpus-per-trial N)",
        flush=True,
    )
    return res


def _autoscaler_types(config: Path) -> list[dict]:
    """The resources of each node type an autoscaler may start: those it reported to Ray (KubeRay's worker
    groups), and those in the cluster launcher's config file (`ray up`); none without either."""
    import yaml

    types = _reported_node_groups()
    config = Path(config).expanduser()
    if config.is_file():
        doc = (yaml.safe_load(config.read_text()) or {}).get("available_node_types") or {}
        types += [dict(t.get("resources") or {}) for t in doc.values() if t.get("max_workers", 1) > 0]
    return types


def _reported_node_groups() -> list[dict]:
    """The node groups the connected cluster's autoscaler reported to Ray's GCS (KubeRay's autoscaler writes
    its worker groups there; Ray Data reads them the same way), each group's resources; none where it has not."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # no connected cluster, or a Ray without the key: the config file still counts
        return []
    if config is None:
        return []
    return [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]


def _autoscaler_gpus(config: Path) -> float:
    """The most GPUs of a node type the cluster launcher's autoscaler may start (0 without its config)."""
    return max((float(t.get("GPU", 0)) for t in _autoscaler_types(config)), default=0)


def _asked(settings: SearchSettings, space: Space) -> dict:
    """One trial's {cpu, gpu} as given (a gpu of auto never asks for more than there is)."""
    res = {**space.resources, **{k: v for k, v in settings.resources.items() if v is not None}}
    return {"cpu": res["cpu"], "gpu": 0 if res["gpu"] == "auto" else res["gpu"]}


def _this_machine() -> dict:
    import torch

    from ..data.stream import available_cpus

    return {"CPU": available_cpus(), "GPU": torch.cuda.device_count()}


def check_fits(res: dict, nodes: list[dict], where: str) -> None:
    """Refuse trial resources no node can grant: Ray would wait for them forever, warning every minute."""
    if any(res["cpu"] <= n.get("CPU", 0) and res["gpu"] <= n.get("GPU", 0) for n in nodes):
        return
    most = {k: max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU")}
    raise SpaceError(
        f"each trial asks for {res['cpu']:g} CPU and {res['gpu']:g} GPU, more than {where} has "
        f"({most['CPU']:g} CPUs, {most['GPU']:g} GPUs at most); give --cpus-per-trial and --gpus-per-trial "
        f"within that"
    )


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


def max_flops(data, space: Space, epochs: float, model_kwargs: dict) -> float:
    """ASHA's max_t: the training FLOPs of the costliest full-resolution baseline a trial of this space
    may run over the epoch budget (each model, each end of a searched range), as the run's own ledger
    counts them: its objective, full batches only."""
    from ..compress import baseline_method
    from ..train.ledger import FlopsLedger

    return max(
        FlopsLedger.for_config(replace(cfg, schedule=f"{baseline_method()}:1x1"), data).epoch_flops(1) * epochs
        for _, cfg in space.trial_configs(model_kwargs)
    )


def _close_stale_trials(db: Path) -> None:
    """After fit() no trial runs: an Optuna trial still RUNNING lost its Tune trial (driver
    killed before Tune saved it); mark it FAIL so the study holds nothing stuck. The objectives are
    named, so optuna-dashboard shows val_metric and train_flops."""
    if not db.exists():
        return
    study = load_study(db)
    with warnings.catch_warnings():  # experimental in Optuna, and only a label
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRICS)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
