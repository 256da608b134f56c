"""The ``c2f-search`` command line: ``train`` and ``flops`` here, ``search``, ``pareto`` and ``demo``
in ``c2f_search.search.commands`` (which loads Ray only when a search runs)."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

from ._args import (EPILOG_SCHEDULE, Parser, add_data_args, add_model_args, add_model_setting_args, config_error_line,
                    finite_float, given_config, norm_arg, out_path, positive_float, positive_int, train_config)
from .config import EXECUTION
from .errors import C2FError, CheckpointError, ConfigError, Interrupted

RUN_FILES = ("config.json", "metrics.parquet", "skipped_clips.txt")
DATA_FLAGS = ("data", "val", "labels", "task", "skip_bad", "norm", "no_cache", "num_mel_bins", "target_length",
              "features", "stream_workers")
DATA_DEFAULTS = {"task": "auto", "skip_bad": False, "norm": None, "no_cache": False, "features": "fp32"}
MAX_FRAMES = 8_640_000  # flops: a day of audio at a 10 ms frame shift
# what a resume reads from DIR/config.json, and its types
RECORDED = {"recipe": str | None, "target_length_reason": str | None, "overrides": dict,
            "data": {"data": str | None, "val": str | None, "labels": str | None, "task": str | None,
                     "skip_bad": bool | None, "norm": str | list | None, "no_cache": bool | None,
                     "num_mel_bins": int | None, "target_length": int | None, "features": str | None,
                     "stream_workers": int | None}}
# data flags a resumed run may change: where features come from, not what they are (Run checks their dtype)
DATA_EXECUTION = ("no_cache", "features", "stream_workers")


# ---------------------------------------------------------------------------- train
def _run_folder(out: Path, a) -> None:
    """Refuse to silently reuse a folder that holds a run; --overwrite clears it first. (That the folder
    can be written is known already: the command holds its lock, io.folder_lock.)"""
    has_run = out.is_dir() and (any((out / f).exists() for f in RUN_FILES) or (out / "checkpoints").is_dir())
    if a.resume:
        return
    if has_run and not a.overwrite:
        raise C2FError(f"--out {out}: holds a run already; pass --resume to continue it, --overwrite to replace "
                       f"it, or choose another --out")


def _make_run_folder(out: Path, overwrite: bool) -> None:
    """Create (or, with --overwrite, clear) the run folder: only once every check has passed."""
    if overwrite:
        import shutil
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise C2FError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None


def _read_state(path: Path) -> dict:
    from .io import load_checkpoint
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        alt = _newest_intact(path.parent, exclude=path)
        hint = (f"; the newest intact checkpoint is {alt}: continue from it with --resume-from {alt}" if alt
                else "; no intact checkpoint is left beside it, start again with --overwrite")
        raise CheckpointError(f"{e}{hint}") from None


def _newest_intact(ckdir: Path, exclude: Path) -> Path | None:
    from .io import is_temporary, load_checkpoint
    for p in sorted(ckdir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if p != exclude and not is_temporary(p):  # a write in progress, or one a killed writer left
            try:
                load_checkpoint(p)
                return p
            except CheckpointError:
                continue
    return None


def _recorded(run_dir: Path) -> dict:
    from .io import read_json
    f = run_dir / "config.json"
    return read_json(f, RECORDED) if f.is_file() else {}


def _recipe_base(a, recipe) -> dict:
    """The TrainConfig fields a recipe (and the command) sets before the flags given."""
    from .models import get_family
    base = {"objective": "masked-patch", "model": "ssast-tiny"} if a.pretrain else {}
    if recipe is not None:
        base.update(recipe.config())
        if a.model and get_family(a.model) is not get_family(recipe.model):  # its model settings are another family's
            print(f"--recipe {recipe.name}: --model {a.model} replaces {recipe.model}; the recipe's model settings "
                  f"{recipe.model_kwargs} are not used", file=sys.stderr)
            base["model_kwargs"] = {}
    return base


def _overrides(a, recipe) -> dict:
    """The flags given that change what the recipe sets (recorded in config.json)."""
    if recipe is None:
        return {}
    rec = {**recipe.config(), **recipe.data}
    given = {**given_config(a), **{k: getattr(a, k) for k in DATA_FLAGS if getattr(a, k) is not None}}
    if "model_kwargs" in given:
        given.update(given.pop("model_kwargs"))
        rec.update(rec.pop("model_kwargs"))
    return {k: v for k, v in given.items() if k != "data" and rec.get(k) != (list(v) if isinstance(v, tuple) else v)}


def _settings(a, state: dict | None, recorded: dict):
    """(TrainConfig, data args, recipe): the recorded ones of a resumed run overlaid by the flags given,
    refusing a flag that contradicts what the checkpoint was trained with; a fresh run starts from its
    recipe, if any, overlaid by the flags given."""
    from .recipes import load_recipe
    if a.resume and a.recipe and recorded.get("recipe") != a.recipe:
        raise C2FError(f"--recipe {a.recipe}: the run was trained with recipe {recorded.get('recipe')}; drop the "
                       f"flag to continue it, or start a new --out")
    recipe = load_recipe(a.recipe or recorded.get("recipe")) if (a.recipe or recorded.get("recipe")) else None
    data_rec = {**(recipe.data if recipe else {}), **recorded.get("data", {})}
    data_args = {k: getattr(a, k) if getattr(a, k) is not None else data_rec.get(k, DATA_DEFAULTS.get(k))
                 for k in DATA_FLAGS}
    if state is None:
        schedule = a.schedule or (recipe.schedule if recipe else None)
        if not schedule:
            raise C2FError("--schedule is required (e.g. --schedule fshift:2x2,1x4, or a --recipe)")
        if not data_args["data"]:
            raise C2FError("--data is required (e.g. --data builtin:events)")
        return train_config(a, schedule, _recipe_base(a, recipe)), data_args, recipe
    base = dict(state["config"])
    for k, v in given_config(a).items():
        rec = base.get(k)
        if k == "model_kwargs":
            bad = {f: x for f, x in v.items() if rec.get(f) != x}
            if bad:
                f = next(iter(bad))
                raise C2FError(f"--{f.replace('_', '-')} {bad[f]}: the run was trained with {f}={rec.get(f)}; "
                               f"drop the flag to continue it, or start a new --out")
        elif rec != v and k not in ("metric_target", *EXECUTION):
            raise C2FError(f"--{k.replace('_', '-')} {v}: the run was trained with {k}={rec!r}; drop the flag "
                           f"to continue it, or start a new --out")
    for k in DATA_FLAGS:
        given = getattr(a, k)
        if given is not None and k in data_rec and data_rec[k] != given and k not in DATA_EXECUTION:
            raise C2FError(f"--{k.replace('_', '-')} {given}: the run was trained with {data_rec[k]!r}; drop the "
                           f"flag to continue it, or start a new --out")
    schedule = a.schedule or base["schedule"]
    cfg = train_config(a, schedule, base)
    if not data_args["data"]:
        raise C2FError("--data is required: the checkpoint's run folder has no config.json to read it from")
    return cfg, data_args, recipe


def load_data(data_args: dict, quantum: int, progress=True, labelled=True):
    from .data import Data
    return Data.from_specs(data_args["data"], data_args["val"], data_args["labels"], data_args["task"] or "auto",
                           bool(data_args["skip_bad"]), norm_arg(data_args["norm"]),
                           None if data_args["no_cache"] else "auto", progress, quantum=quantum,
                           num_mel_bins=data_args["num_mel_bins"], target_length=data_args["target_length"],
                           labelled=labelled, features=data_args.get("features") or "fp32",
                           workers=data_args.get("stream_workers"))


def cmd_pretrain(a) -> int:
    a.pretrain = True
    return _train_alone(a)


def cmd_train(a) -> int:
    a.pretrain = False
    return _train_alone(a)


def _train_alone(a) -> int:
    """Train with --out held against every other c2f-search command, after clearing the temporary files a
    killed run left there."""
    from .io import folder_lock, remove_stale_temporaries
    out = Path(a.out)
    with folder_lock(out, f"--out {a.out}", "pretrain" if a.pretrain else "train"):
        remove_stale_temporaries(out, out / "checkpoints")
        return _train(a)


def _unstarted(a, out: Path, source: Path) -> dict | None:
    """--resume of a run stopped before its first checkpoint: the settings it recorded, from which it
    trains from the start (as a checkpoint's would be used)."""
    if not (a.resume and not a.resume_from and not source.is_file() and (out / "config.json").is_file()):
        return None
    rec = _recorded(out)
    return {"config": rec["config"], "precision": rec["resolved"]["precision"]}


def _train(a) -> int:
    from .callbacks import ProgressBar, RunFolder
    from .io import atomic_write
    from .models import get_family
    from .schedule import parse_schedule
    from .train import Run

    out = Path(a.out)
    ckdir = out / "checkpoints"
    a.resume = a.resume or a.resume_from is not None
    if a.resume and a.overwrite:
        raise C2FError("--overwrite and --resume contradict each other; give one")
    source = Path(a.resume_from) if a.resume_from else ckdir / "last.pt"
    unstarted = _unstarted(a, out, source)
    if a.resume and not source.is_file() and not unstarted:
        raise C2FError(f"--resume: {source} not found; run without --resume to start"
                       if not a.resume_from else f"--resume-from {source}: no such checkpoint file")
    _run_folder(out, a)
    state = _read_state(source) if a.resume and not unstarted else None
    recorded = _recorded(source.parent.parent) if a.resume else {}
    cfg, data_args, recipe = _settings(a, state or unstarted, recorded)
    if a.pretrain != (cfg.objective == "masked-patch"):
        raise C2FError(f"{source}: a {'pretraining' if not a.pretrain else 'supervised'} run; continue it with "
                       f"c2f-search {'pretrain' if not a.pretrain else 'train'}")
    schedule = parse_schedule(cfg.schedule)
    family = get_family(cfg.model)
    family.check_schedule(cfg.model, schedule)
    quantum = max(schedule.grid_Cs, default=1) * family.time_granularity
    data = load_data(data_args, quantum, progress=not a.no_progress, labelled=not a.pretrain)
    if a.resume and a.target_length is None and recorded.get("target_length_reason"):
        data.target_reason = recorded["target_length_reason"]
    run = Run(cfg, data, a.device, state, callbacks=[ProgressBar(disable=a.no_progress), RunFolder(out)])
    _make_run_folder(out, a.overwrite)
    data_args["target_length"], data_args["num_mel_bins"] = data.fe.target_length, data.fe.num_mel_bins
    atomic_write(out / "config.json", json.dumps(
        {"config": cfg.to_dict(), "data": data_args, "frontend": data.fe.key(),
         "target_length_reason": data.target_reason, "norm": [data.mean, data.std], "classes": data.train.classes,
         "recipe": recipe.name if recipe else None,
         "overrides": recorded.get("overrides", {}) if a.resume else _overrides(a, recipe),
         "resumed_from": str(source) if a.resume and not unstarted else None,
         "resolved": {"device": run.device_name, "precision": run.precision, "compile": run.compiled}}, indent=1))
    n_tr, n_va = data.used_counts()
    what = "unlabelled" if a.pretrain else f"{data.num_classes} classes"
    print(f"{'pretraining' if a.pretrain else 'training'} {cfg.schedule} | {cfg.model} | {n_tr} train / {n_va} val "
          f"clips | {what} ({run.metric_name}) | device {run.device}"
          f"{f' ({run.device_name})' if run.device.type == 'cuda' else ''}, {run.precision}"
          f"{', compiled' if run.compiled else ''} | {run.steps_per_epoch} steps of {cfg.batch_size} per epoch "
          f"(the last partial batch is dropped)", file=sys.stderr)
    if run.compiled:
        print("compiled once per phase: the compiling and warm-up steps are timed apart (compile_time_s), outside "
              "train_time_s and every time saving", file=sys.stderr)
    print(f"target length {data.fe.target_length} frames at {data.fe.frame_shift_ms:g} ms: {data.target_reason}",
          file=sys.stderr)
    if recipe is not None:
        print(f"recipe {recipe.name}: {recipe.description}", file=sys.stderr)
    for line in token_drop_lines(cfg, schedule, run.full, data.num_classes):
        print(line, file=sys.stderr)
    if a.pretrain:
        ob = run.objective
        print(f"masked patch modeling: {ob.full_masked} of {ob.full_tokens} patches masked at full resolution, "
              f"scaled to each phase's tokens; labels are not read", file=sys.stderr)
    if a.resume:
        print(f"continuing from {source} at step {run.step} (epoch {run.step / run.steps_per_epoch:.2f})"
              if not unstarted else f"{out} holds no checkpoint yet (it was stopped before its first one): training "
              f"from the start with its recorded settings", file=sys.stderr)
        if state is not None and state.get("precision", run.precision) != run.precision:
            why = f"--precision {cfg.precision}" if cfg.precision != "auto" else f"auto on {run.device_name}"
            print(f"the checkpoint trained in {state['precision']}; it continues in {run.precision} ({why})",
                  file=sys.stderr)
    run.fit()
    last = run.history[-1]
    if last["averaged"]:  # the weight-averaged model, loadable with --init like final.pt
        print(f"weight averaging ({run.averaging.members()}): {run.metric_name} {last['val_metric']:.4f} -> "
              f"{ckdir / 'averaged.pt'}")
        last = run.history[-2]
    msg = "reached --metric-target" if last["target_reached"] else "schedule finished"
    if schedule.is_adaptive:
        print(f"learned schedule: {last['trained']} (re-run it with --schedule)", file=sys.stderr)
        for prev, nxt in zip(run.phases, run.phases[1:]):
            print(f"  C={prev['C']} -> C={nxt['C']} after {prev['steps']} steps: {nxt['reason']}", file=sys.stderr)
    compiling = f" (+{last['compile_time_s']:.1f}s compiling)" if last["compile_time_s"] else ""
    print(f"{msg}: {run.metric_name} {last['val_metric']:.4f} at epoch {last['epoch']:.2f}, "
          f"{last['train_flops'] / 1e12:.2f} TFLOPs, {last['train_time_s']:.1f}s training{compiling}, "
          f"{last['wall_time_s']:.0f}s in all -> {out}/metrics.parquet")
    _bad_report(data, out)
    return 0


def token_drop_lines(cfg, schedule, full, num_classes: int) -> list[str]:
    """For each phase that drops tokens: how many it keeps and how the count was rounded."""
    from .compress import get_method
    from .transfer import build_for_phase
    drops = [(k, p) for k, p in enumerate(schedule.phases) if get_method(p.method).drops_at(p.C)]
    if not drops:
        return []
    grid = build_for_phase(cfg.model, cfg.build_kwargs(num_classes), "none", 1, full, device="meta").token_grid
    return [f"phase {k + 1}: {get_method(p.method).describe_keep(p.C, grid)}" for k, p in drops]


def _bad_report(data, out: Path) -> None:
    from .io import atomic_write
    bad = data.bad_report()
    if bad:
        atomic_write(out / "skipped_clips.txt", "".join(f"{f}\t{p}\n" for f, p in bad))
        print(f"--skip-bad: skipped {len(bad)} clips, listed in {out / 'skipped_clips.txt'}", file=sys.stderr)
        for f, p in bad[:5]:
            print(f"  {f}: {p}", file=sys.stderr)


# ---------------------------------------------------------------------------- flops
def cmd_flops(a) -> int:
    from ._args import given_model_settings
    from .flops_table import flops_table, format_table
    from .models import get_family
    from .schedule import parse_schedule

    schedules = [parse_schedule(s) for s in (a.schedule or ["none:1x20"])]
    for s in schedules:
        get_family(a.model).check_schedule(a.model, s)
    if a.target_length:
        T = a.target_length
    else:  # AST pads e.g. 998 frames (10 s) to 1024: round up to a multiple of granularity x max C
        frames = 1 + int((a.seconds * 16000 - 400) // 160)
        q = get_family(a.model).time_granularity * max(max(s.grid_Cs, default=1) for s in schedules)
        T = math.ceil(frames / q) * q
    if T > MAX_FRAMES:  # past this FlopCounterMode's tensor sizes overflow
        given = f"--target-length {a.target_length}" if a.target_length else f"--seconds {a.seconds:g}"
        raise C2FError(f"{given}: {T} frames is more than {MAX_FRAMES}, a day of "
                       f"audio at 10 ms; count a shorter clip")
    rows = flops_table(schedules, a.model, a.num_mel_bins, T, a.num_classes, given_model_settings(a))
    if a.json:
        print(json.dumps({"model": a.model, "num_mel_bins": a.num_mel_bins, "target_length": T, "schedules": rows},
                         indent=1))
    else:
        print(format_table(rows, a.model, a.num_mel_bins, T))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> Parser:
    from .models import list_models
    from .search import commands as search_commands
    p = Parser(prog="c2f-search",
               description="Search coarse-to-fine training schedules for audio spectrogram transformers "
                           "(Feng et al., 'From Coarse to Fine', ICASSP 2024).", epilog=EPILOG_SCHEDULE)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train one schedule (no Ray)", epilog=EPILOG_SCHEDULE,
                       description="Train one coarse-to-fine schedule and write DIR/metrics.parquet (one row per "
                                   "evaluation), DIR/config.json and checkpoints (one per phase end, final, last). "
                                   "Without --target-length the full-resolution length is derived from the data. "
                                   "Models: AST, HTS-AT, CNN14, SSAST (docs/models.md); --recipe sets a published "
                                   "setup (docs/recipes.md). Every step trains a full batch: the last partial batch "
                                   "of an epoch is dropped.")
    _add_run_args(t, "runs/train")
    t.set_defaults(fn=cmd_train)

    pt = sub.add_parser("pretrain", help="self-supervised SSAST pretraining of one schedule (no Ray)",
                        epilog=EPILOG_SCHEDULE,
                        description="Pretrain an SSAST encoder (default ssast-tiny) by masked patch modeling "
                                    "(InfoNCE + 10 MSE over masked patches) on unlabelled audio: a folder of audio "
                                    "files (searched recursively; a folder with train/ and test/ uses those), a "
                                    "datafile or builtin:events, labels ignored. The masked patches (--mask-patches, "
                                    "default 400/512 of the full-resolution patches) scale with each phase's tokens. "
                                    "Reports the masked-patch accuracy on held-out clips (every 10th without --val) "
                                    "and writes DIR/checkpoints/final.pt, which 'c2f-search train --init' fine-tunes.")
    _add_run_args(pt, "runs/pretrain")
    pt.add_argument("--mask-patches", type=positive_int,
                    help="masked patches at full resolution (default: 400/512 of them, SSAST's)")
    pt.set_defaults(fn=cmd_pretrain)

    f = sub.add_parser("flops", help="training FLOPs per phase and schedule, and the saving against none",
                       epilog=EPILOG_SCHEDULE,
                       description="Count training FLOPs (forward+backward per sample) per phase with torch's "
                                   "FlopCounterMode, attention included.")
    f.add_argument("--schedule", action="append", help="repeat for several schedules (default none:1x20)")
    f.add_argument("--model", default="ast-base", choices=list_models())
    f.add_argument("--seconds", type=positive_float, default=10.0,
                   help="clip length; frames are rounded up like AST's 1024")
    f.add_argument("--target-length", type=positive_int, help="frames at full resolution (overrides --seconds)")
    f.add_argument("--num-mel-bins", type=positive_int, default=128)
    f.add_argument("--num-classes", type=positive_int, default=527)
    add_model_setting_args(f)
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(fn=cmd_flops)

    search_commands.add_commands(sub)
    return p


def _add_run_args(t, out: str) -> None:
    t.add_argument("--schedule", help="e.g. fshift:2x2,1x4 (required, except with --resume or --recipe)")
    t.add_argument("--out", default=out, metavar="DIR", type=out_path, help=f"output folder (default {out})")
    t.add_argument("--metric-target", type=finite_float,
                   help="budget mode: stop at the first final-phase evaluation whose validation metric reaches this")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--resume", action="store_true",
                   help="continue DIR's run from DIR/checkpoints/last.pt, with its recorded settings (a run stopped "
                        "before its first checkpoint starts again from the beginning)")
    t.add_argument("--resume-from", metavar="CKPT",
                   help="continue from this checkpoint: an earlier one of this run (e.g. phase1-C2.pt), or one of "
                        "another run whose trained phases are a prefix of --schedule (a fork)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in DIR")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_data_args(t, required=False)
    add_model_args(t)


def main(argv=None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    prog = f"c2f-search {a.command}"
    on_term = _handle_sigterm()
    try:
        return a.fn(a) or 0
    except ConfigError as e:
        print(f"{prog}: error: {config_error_line(e)}", file=sys.stderr)
    except C2FError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted{_resume_hint(a)}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
    return 2


def _handle_sigterm():
    """SIGTERM (a cluster scheduler, a spot reclaim) stops a command as Ctrl-C does: cleanly, with the
    resume hint, exit code 143. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return None

    def term(signum, frame):
        raise Interrupted(signum)
    return signal.signal(signal.SIGTERM, term)


def _resume_hint(a) -> str:
    """How to go on after an interrupt: --resume where the folder holds something to resume."""
    if a.command == "confirm" and (Path(a.dir) / "confirm").is_dir():
        return "; start it again: the same command with --overwrite"
    out = Path(getattr(a, "out", None) or "")
    marker = {"train": "config.json", "pretrain": "config.json", "search": "search.json", "demo": "search.json"}
    if a.command not in marker:
        return ""
    if not (out / marker[a.command]).is_file():
        return "; nothing was saved yet: run the same command again"
    return f"; continue with: c2f-search {a.command} --out {a.out} --resume"


if __name__ == "__main__":
    sys.exit(main())
