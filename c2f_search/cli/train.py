"""``train`` and ``pretrain``: one schedule, no Ray, in a run folder (``layout.RunDir``) that ``--resume``
continues. The steps: where the run starts (``_start``: fresh, a checkpoint, or a run stopped before its
first one), its settings (``run_settings``: the one merge of ``settings``), the data, the ``Run`` with the
command's callbacks (the header, the progress bar, the folder, the summary), the record in ``config.json``."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import EXECUTION
from ..errors import C2FError, CheckpointError, Interrupted
from ..layout import RunDir
from ..models.base import is_run_state
from ..settings import DataSettings, check_agrees, given, train_config
from ..train.callbacks import Callback
from .args import (
    EPILOG_SCHEDULE,
    add_data_args,
    add_log_arg,
    add_model_args,
    finite_float,
    given_config,
    out_path,
    positive_int,
)

# what a resume reads from DIR/config.json, and its types
RECORDED = {
    "config": dict,
    "recipe": str | None,
    "overrides": dict,
    "data": dict,
    "resolved": dict,
    "norm": list | None,
    "target_length_reason": str | None,
}
PRETRAINING = {"objective": "masked-patch", "model": "ssast-tiny"}  # what `pretrain` sets before a recipe
GO_ON = "drop the flag to continue it, or start a new --out"


def cmd_train(a) -> int:
    return _train_alone(a, pretrain=False)


def cmd_pretrain(a) -> int:
    return _train_alone(a, pretrain=True)


def _train_alone(a, pretrain: bool) -> int:
    """Train with --out held against every other c2f-search command, after clearing the temporary files a
    killed run left there."""
    from ..files import folder_lock, remove_stale_temporaries

    folder = RunDir(a.out)
    with folder_lock(folder.lock, f"--out {a.out}", "pretrain" if pretrain else "train"):
        remove_stale_temporaries(folder.path, folder.checkpoints)
        return _train(a, folder, pretrain)


@dataclass
class Start:
    """Where a run starts: from scratch (no `source`), from a checkpoint (`state`: a resume or a fork), or,
    for a run stopped before its first checkpoint, from the start with its recorded settings (`unstarted`).
    `recorded` is the config.json of the folder the state comes from."""

    source: Path | None = None
    state: dict | None = None
    recorded: dict | None = None
    unstarted: bool = False

    @property
    def resumed(self) -> bool:
        return self.source is not None


def _start(a, folder: RunDir) -> Start:
    resume = a.resume or a.resume_from is not None
    if resume and a.overwrite:
        raise C2FError("--overwrite and --resume contradict each other; give one")
    if not resume:
        if folder.holds_run() and not a.overwrite:
            raise C2FError(
                f"--out {folder.path}: holds a run already; pass --resume to continue it, --overwrite to "
                f"replace it, or choose another --out"
            )
        return Start()
    source = Path(a.resume_from) if a.resume_from else folder.last
    if not a.resume_from and not source.is_file() and folder.checkpoints.is_dir():
        # last.pt lost, others kept (phase ends, final.pt): never train over them from step 0
        kept = sorted(p for p in folder.checkpoints.glob("*.pt") if not _is_temp(p))
        if kept:
            newest = _newest_intact(folder.checkpoints, exclude=source)
            if newest is None:
                raise CheckpointError(
                    f"--resume: {source} is missing and no checkpoint beside it can be read "
                    f"({', '.join(p.name for p in kept)}); start again with --overwrite"
                )
            print(f"--resume: {source} is missing; continuing from the newest intact checkpoint, {newest}")
            source = newest
    if not a.resume_from and not source.is_file() and folder.config.is_file():
        return Start(source, None, _recorded(folder), unstarted=True)
    if not source.is_file():
        raise C2FError(
            f"--resume-from {source}: no such checkpoint file"
            if a.resume_from
            else f"--resume: {source} not found; run without --resume to start"
        )
    recorded = _recorded(RunDir(source.parent.parent))  # the folder's record first: a damaged one is named
    return Start(source, _read_state(source), recorded)


def _read_state(path: Path) -> dict:
    from ..files import load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        alt = _newest_intact(path.parent, exclude=path)
        hint = (
            f"; the newest intact checkpoint is {alt}: continue from it with --resume-from {alt}"
            if alt
            else "; no intact checkpoint is left beside it, start again with --overwrite"
        )
        raise CheckpointError(f"{e}{hint}") from None
    if not is_run_state(state) or not isinstance(state.get("config"), dict):
        raise CheckpointError(
            f"{path}: not a c2f-search training state (last.pt, final.pt or a phase checkpoint of a run "
            f"folder); to start from its weights, use --init {path}"
        )
    return state


def _is_temp(p: Path) -> bool:
    from ..files import is_temporary

    return is_temporary(p)  # a write in progress, or one a killed writer left


def _newest_intact(ckdir: Path, exclude: Path) -> Path | None:
    """The newest checkpoint in `ckdir` that loads and holds a run's training state."""
    from ..files import load_checkpoint

    for p in sorted(ckdir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if p != exclude and not _is_temp(p):
            try:
                state = load_checkpoint(p)
            except CheckpointError:
                continue
            if is_run_state(state) and isinstance(state.get("config"), dict):
                return p
    return None


def _recorded(folder: RunDir) -> dict:
    """A run's config.json, checked as the flags are: a hand-edited value is refused naming its key."""
    from ..config import TrainConfig
    from ..errors import ConfigError, ScheduleError
    from ..files import read_json
    from ..validate import validate

    if not folder.config.is_file():
        return {}
    rec = read_json(folder.config, RECORDED)
    fix = "restore the file, or start again with --overwrite"
    if "config" not in rec:
        raise C2FError(f"{folder.config}: key 'config' is missing; {fix}")
    try:
        validate(TrainConfig.from_dict(rec["config"]))
    except ConfigError as e:
        raise C2FError(f"{folder.config}: key 'config.{e.field}': {e.problem}; {fix}") from None
    except ScheduleError as e:
        raise C2FError(f"{folder.config}: key 'config.schedule': {e}; {fix}") from None
    except TypeError as e:
        raise C2FError(f"{folder.config}: key 'config' does not hold a training configuration ({e}); {fix}") from None
    bad = DataSettings.from_run_record(rec).problem()
    if bad:
        raise C2FError(f"{folder.config}: key 'data.{bad[0]}' {bad[1]}; {fix}")
    return rec


def run_settings(a, start: Start, pretrain: bool):
    """(TrainConfig, DataSettings, recipe): TrainConfig's defaults < the recipe < what the run recorded < the
    flags given. A flag that contradicts what a resumed run was trained with is refused (how it executes,
    and the metric target, may change)."""
    from ..recipes import load_recipe

    recorded = start.recorded or {}
    if start.resumed and a.recipe and recorded.get("recipe") != a.recipe:
        raise C2FError(f"--recipe {a.recipe}: the run was trained with recipe {recorded.get('recipe')}; {GO_ON}")
    name = a.recipe or recorded.get("recipe")
    recipe = load_recipe(name) if name else None
    trained = (start.state or {}).get("config") or recorded.get("config")
    flags, data_flags = given_config(a), DataSettings.from_flags(a)
    data = DataSettings.from_dict(DataSettings.from_recipe(recipe))
    if trained is not None:  # a resume: the recorded settings, which the flags given must agree with
        check_agrees(trained, flags, "the run was trained", GO_ON, may_change=("metric_target", *EXECUTION))
        rec_data = DataSettings.from_run_record(recorded) if recorded else data
        check_agrees(
            rec_data.to_dict(),
            data_flags,
            "the run was trained",
            GO_ON,
            may_change=DataSettings.EXECUTION,
            names={v: k for k, v in DataSettings.FLAGS.items()},
        )
        data, base = rec_data, trained
    else:
        base = {**(PRETRAINING if pretrain else {}), **_recipe_base(a, recipe)}
    schedule = a.schedule or (trained or {}).get("schedule") or (recipe.schedule if recipe else None)
    if not schedule:
        raise C2FError("--schedule is required (e.g. --schedule fshift:2x2,1x4, or a --recipe)")
    data = DataSettings.from_dict({**data.to_dict(), **data_flags, "labelled": not pretrain})
    if not data.train:
        raise C2FError(
            "--data is required: the checkpoint's run folder has no config.json to read it from"
            if trained is not None
            else "--data is required (e.g. --data builtin:events)"
        )
    return train_config(base, flags, {"schedule": schedule}), data, recipe


def _recipe_base(a, recipe) -> dict:
    """The TrainConfig fields a recipe sets before the flags given."""
    from ..models import get_family

    if recipe is None:
        return {}
    base = recipe.config()
    if a.model and get_family(a.model) is not get_family(recipe.model):  # its model settings are another family's
        print(
            f"--recipe {recipe.name}: --model {a.model} replaces {recipe.model}; the recipe's model settings "
            f"{recipe.model_kwargs} are not used",
            file=sys.stderr,
        )
        base["model_kwargs"] = {}
    return base


def _overrides(a, recipe) -> dict:
    """The flags given that change what the recipe sets (recorded in config.json)."""
    if recipe is None:
        return {}
    rec = {**recipe.config(), **recipe.data}
    flags = {
        **given_config(a),
        **given(a, ("val", "labels", "task", "skip_bad", "norm", "num_mel_bins", "target_length", "features")),
    }
    if "model_kwargs" in flags:
        flags.update(flags.pop("model_kwargs"))
        rec.update(rec.pop("model_kwargs"))
    return {k: v for k, v in flags.items() if rec.get(k) != (list(v) if isinstance(v, tuple) else v)}


def _train(a, folder: RunDir, pretrain: bool) -> int:
    from ..models import get_family
    from ..train.callbacks import ProgressBar, RunFolder
    from ..train.run import Run

    start = _start(a, folder)
    cfg, data_settings, recipe = run_settings(a, start, pretrain)
    if pretrain != (cfg.objective == "masked-patch"):
        raise C2FError(
            f"{start.source}: a {'pretraining' if not pretrain else 'supervised'} run; continue it with "
            f"c2f-search {'pretrain' if not pretrain else 'train'}"
        )
    schedule = cfg.schedule
    family = get_family(cfg.model)
    family.check_schedule(cfg.model, schedule)
    trackers = _trackers(a.log, folder, cfg)  # checked before the data is read
    data = data_settings.load(quantum=family.quantum(schedule.grid_Cs), progress=not a.no_progress)
    callbacks = [
        RunHeader(pretrain, recipe, start, folder),
        ProgressBar(disable=a.no_progress),
        RunFolder(folder.path),
        RunSummary(folder),
        *trackers,
    ]
    run = Run(cfg, data, a.device, start.state, callbacks=callbacks)
    _make_folder(folder, a.overwrite)
    _write_record(
        folder,
        run,
        data_settings.with_data(data),
        recipe,
        (start.recorded or {}).get("overrides", {}) if start.resumed else _overrides(a, recipe),
        start,
    )
    try:
        run.fit()
    except BaseException as e:  # the trackers' runs end as the run did: killed by a signal or Ctrl-C, or failed
        for t in trackers:
            t.close("KILLED" if isinstance(e, (KeyboardInterrupt, Interrupted)) else "FAILED")
        raise
    _bad_report(data, folder)
    return 0


def _trackers(log: list[str] | None, folder: RunDir, cfg) -> list:
    """The Tracking callback for --log, its trackers checked; none without --log."""
    if not log:
        return []
    from ..train.callbacks import tracking
    from .search import checked_trackers

    trackers = [tracking.Tracker(t["kind"], t["target"]) for t in checked_trackers(log, folder.path)]
    params = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (str, int, float, bool)) and v is not None}
    return [tracking.Tracking(trackers, folder.path, folder.path.name, params)]


def _make_folder(folder: RunDir, overwrite: bool) -> None:
    """Create (or, with --overwrite, clear) the run folder: only once every check has passed."""
    if overwrite:
        folder.clear()
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise C2FError(
            f"--out {folder.path}: cannot write there ({e.strerror or e}); choose a writable folder"
        ) from None


def _write_record(folder: RunDir, run, data: DataSettings, recipe, overrides: dict, start: Start) -> None:
    """config.json: what the run trains with, so that --resume needs no flags."""
    from ..files import atomic_write

    atomic_write(
        folder.config,
        json.dumps(
            {
                "config": run.cfg.to_dict(),
                "data": data.to_dict(),
                "frontend": run.data.fe.key(),
                "target_length_reason": data.target_reason,
                "norm": data.norm,
                "classes": run.data.train.classes,
                "recipe": recipe.name if recipe else None,
                "overrides": overrides,
                "resumed_from": str(start.source) if start.state is not None else None,
                "resolved": {"device": run.device_name, "precision": run.precision, "compile": run.compiled},
            },
            indent=1,
        ),
    )


class RunHeader(Callback):
    """What the run is, printed before it trains: schedule, model, clips, device and precision, steps per
    epoch, target length, recipe, the tokens a token-dropping phase keeps, where a resumed run continues."""

    def __init__(self, pretrain: bool, recipe, start: Start, folder: RunDir):
        self.pretrain, self.recipe, self.start, self.folder = pretrain, recipe, start, folder

    def on_fit_start(self, run):
        cfg, data = run.cfg, run.data
        n_tr, n_va = data.used_counts()
        what = "unlabelled" if self.pretrain else f"{data.num_classes} classes"
        lines = [
            f"{'pretraining' if self.pretrain else 'training'} {cfg.schedule} | {cfg.model} | {n_tr} train / "
            f"{n_va} val clips | {what} ({run.metric_name}) | device {run.device}"
            f"{f' ({run.device_name})' if run.device.type == 'cuda' else ''}, {run.precision}"
            f"{', compiled' if run.compiled else ''} | {run.steps_per_epoch} steps of {cfg.batch_size} per epoch "
            f"(the last partial batch is dropped)"
        ]
        if run.compiled:
            lines.append(
                "compiled once per phase: the compiling and warm-up steps are timed apart (compile_time_s), "
                "outside train_time_s and every time saving"
            )
        lines.append(
            f"target length {data.fe.target_length} frames at {data.fe.frame_shift_ms:g} ms: {data.target_reason}"
        )
        if self.recipe is not None:
            lines.append(f"recipe {self.recipe.name}: {self.recipe.description}")
        lines += token_drop_lines(cfg, run.plan, run.full, data.num_classes)
        if self.pretrain:
            ob = run.objective
            lines.append(
                f"masked patch modeling: {ob.full_masked} of {ob.full_tokens} patches masked at full "
                f"resolution, scaled to each phase's tokens; labels are not read"
            )
        start = self.start
        if start.unstarted:
            lines.append(
                f"{self.folder.path} holds no checkpoint yet (it was stopped before its first one): training "
                f"from the start with its recorded settings"
            )
        elif start.resumed:
            lines.append(
                f"continuing from {start.source} at step {run.step} (epoch {run.step / run.steps_per_epoch:.2f})"
            )
            if start.state.get("precision", run.precision) != run.precision:
                why = f"--precision {cfg.precision}" if cfg.precision != "auto" else f"auto on {run.device_name}"
                lines.append(
                    f"the checkpoint trained in {start.state['precision']}; it continues in {run.precision} ({why})"
                )
        print("\n".join(lines), file=sys.stderr)


class RunSummary(Callback):
    """How the run ended, printed once it has: the averaged model, a learned schedule's phases, the metric,
    FLOPs and time, and where the metrics are."""

    def __init__(self, folder: RunDir):
        self.folder = folder

    def on_fit_end(self, run):
        last = run.history[-1]
        if last["averaged"]:  # the weight-averaged model, loadable with --init like final.pt
            print(
                f"weight averaging ({run.averaging.members()}): {run.metric_name} {last['val_metric']:.4f} -> "
                f"{self.folder.averaged}"
            )
            last = run.history[-2]
        if run.plan.is_adaptive:
            print(f"learned schedule: {last['trained']} (re-run it with --schedule)", file=sys.stderr)
            for prev, nxt in zip(run.phases, run.phases[1:]):
                print(f"  C={prev['C']} -> C={nxt['C']} after {prev['steps']} steps: {nxt['reason']}", file=sys.stderr)
        msg = "reached --metric-target" if last["target_reached"] else "schedule finished"
        compiling = f" (+{last['compile_time_s']:.1f}s compiling)" if last["compile_time_s"] else ""
        print(
            f"{msg}: {run.metric_name} {last['val_metric']:.4f} at epoch {last['epoch']:.2f}, "
            f"{last['train_flops'] / 1e12:.2f} TFLOPs, {last['train_time_s']:.1f}s training{compiling}, "
            f"{last['wall_time_s']:.0f}s in all -> {self.folder.metrics}"
        )


def token_drop_lines(cfg, schedule, full, num_classes: int) -> list[str]:
    """For each phase that drops tokens: how many it keeps and how the count was rounded."""
    from ..compress import get_method
    from ..models.phase import build_for_phase

    drops = [(k, p) for k, p in enumerate(schedule.phases) if get_method(p.method).drops_at(p.C)]
    if not drops:
        return []
    grid = build_for_phase(cfg.model, cfg.build_kwargs(num_classes), "none", 1, full, device="meta").token_grid
    return [f"phase {k + 1}: {get_method(p.method).describe_keep(p.C, grid)}" for k, p in drops]


def _bad_report(data, folder: RunDir) -> None:
    from ..files import atomic_write

    bad = data.bad_report()
    if bad:
        atomic_write(folder.skipped, "".join(f"{f}\t{p}\n" for f, p in bad))
        print(f"--skip-bad: skipped {len(bad)} clips, listed in {folder.skipped}", file=sys.stderr)
        for f, p in bad[:5]:
            print(f"  {f}: {p}", file=sys.stderr)


def _add_run_args(t, out: str) -> None:
    t.add_argument("--schedule", help="e.g. fshift:2x2,1x4 (required, except with --resume or --recipe)")
    t.add_argument("--out", default=out, metavar="DIR", type=out_path, help=f"output folder (default {out})")
    t.add_argument(
        "--metric-target",
        type=finite_float,
        help="budget mode: stop at the first final-phase evaluation whose validation metric reaches this",
    )
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue DIR's run from DIR/checkpoints/last.pt, with its recorded settings (a run stopped "
        "before its first checkpoint starts again from the beginning)",
    )
    t.add_argument(
        "--resume-from",
        metavar="CKPT",
        help="continue from this checkpoint: an earlier one of this run (e.g. phase1-C2.pt), or one of "
        "another run whose trained phases are a prefix of --schedule (a fork)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace the run already in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_log_arg(t, "the run (its schedule and settings as parameters, every evaluation's numbers as metrics)")
    add_data_args(t, required=False)
    add_model_args(t)


def add_parser(sub) -> None:
    """``train`` and ``pretrain``."""
    t = sub.add_parser(
        "train",
        help="train one schedule (no Ray)",
        epilog=EPILOG_SCHEDULE,
        description="Train one coarse-to-fine schedule and write DIR/metrics.parquet (one row per "
        "evaluation), DIR/config.json and checkpoints (one per phase end, final, last). "
        "Without --target-length the full-resolution length is derived from the data. "
        "Models: AST, HTS-AT, CNN14, SSAST (docs/models.md); --recipe sets a published "
        "setup (docs/recipes.md). Every step trains a full batch: the last partial batch "
        "of an epoch is dropped.",
    )
    _add_run_args(t, "runs/train")
    t.set_defaults(fn=cmd_train)

    pt = sub.add_parser(
        "pretrain",
        help="self-supervised SSAST pretraining of one schedule (no Ray)",
        epilog=EPILOG_SCHEDULE,
        description="Pretrain an SSAST encoder (default ssast-tiny) by masked patch modeling "
        "(InfoNCE + 10 MSE over masked patches) on unlabelled audio: a folder of audio "
        "files (searched recursively; a folder with train/ and test/ uses those), a "
        "datafile or builtin:events, labels ignored. The masked patches (--mask-patches, "
        "default 400/512 of the full-resolution patches) scale with each phase's tokens. "
        "Reports the masked-patch accuracy on held-out clips (every 10th without --val) "
        "and writes DIR/checkpoints/final.pt, which 'c2f-search train --init' fine-tunes.",
    )
    _add_run_args(pt, "runs/pretrain")
    pt.add_argument(
        "--mask-patches",
        type=positive_int,
        help="masked patches at full resolution (default: 400/512 of them, SSAST's)",
    )
    pt.set_defaults(fn=cmd_pretrain)
