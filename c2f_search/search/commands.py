"""``search``, ``pareto`` and ``demo`` commands. Ray and Optuna are imported only when they run."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .._args import (add_data_args, add_model_setting_args, finite_float, given_model_settings, nonneg_float,
                      nonneg_int, norm_arg, out_path, positive_float, positive_int, seed_int)
from ..errors import C2FError, NoResults, SpaceError

DEMO_DATA = "builtin:events?train=1000&val=300"
DEMO_TEST = "builtin:events?train=10&val=400&seed=1"  # other clips than the data's (another seed)
DEMO_DEPTH, DEMO_EPOCHS = 2, 5.0
SAMPLERS = ("auto", "tpe", "nsga2", "random", "grid")
# flags without a value default to "not given" (None), so that a resume can tell what was given
SEARCH_DEFAULTS = {"space": "default", "sampler": "auto", "scheduler": "fifo", "max_failures": 1,
                   "keep_checkpoints": 2, "seed": 0, "reuse_actors": True}
RESUME_MAY_CHANGE = ("out", "resume", "address", "trials")  # where it runs; trials may be raised


def add_search_args(s) -> None:
    s.add_argument("--space", help="search-space YAML: a path, or a shipped one: default (the default), paper, "
                                   "table1, pretrain, adaptive, patchout, demo")
    s.add_argument("--trials", type=positive_int, help="number of trials (default 12; grid mode: the whole grid); with "
                                                         "--resume it may raise the number the search was started with")
    s.add_argument("--out", default="runs/search", metavar="DIR", type=out_path)
    s.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna sampler; auto (the default) = grid for a 'schedules' space, TPE otherwise")
    s.add_argument("--scheduler", choices=("fifo", "asha", "pbt"),
                   help="fifo (the default) runs every trial to its end; asha stops weak trials early, comparing "
                        "them at equal cumulative train FLOPs; pbt runs a population (--trials members) of a learned "
                        "space (e.g. --space adaptive) under Ray's population-based training, which may lower a "
                        "member's C (never raise it)")
    s.add_argument("--epochs", type=positive_float, help="epoch budget per trial (overrides the space's 'epochs'; "
                                                           "grid schedules are rescaled to it)")
    s.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in DIR with the settings it was started with (a flag that "
                        "contradicts them is refused; DIR may have been moved or copied)")
    s.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    s.add_argument("--storage", help="Tune storage path or URI (s3://..., gs://..., shared folder); default DIR")
    s.add_argument("--cpus-per-trial", type=positive_float, help="overrides the space's resources.cpu")
    s.add_argument("--gpus-per-trial", type=nonneg_float,
                   help="overrides the space's resources.gpu (fractional allowed; 0: train on CPUs); by default "
                        "(auto) one GPU per trial where the cluster has GPUs, none where it has none")
    s.add_argument("--reuse-actors", action=argparse.BooleanOptionalAction,
                   help="run the next trial in a finished trial's worker process (default on: no process start, "
                        "imports or compile-worker start per trial; each trial still starts from a clean "
                        "compiler state)")
    s.add_argument("--max-failures", type=nonneg_int,
                   help="retries of a crashed trial from its last checkpoint (default 1)")
    s.add_argument("--keep-checkpoints", type=nonneg_int,
                   help="checkpoints kept per trial (default 2; 0 = all) besides those the front may need, which are "
                        "never deleted: phase ends and final-phase evaluations that beat every earlier one "
                        "(the paper's selected epochs are among them); each holds weights and optimizer state")
    s.add_argument("--metric-target", type=finite_float, help="budget mode for every trial")
    s.add_argument("--seed", type=seed_int, help="sampler seed (default 0)")
    add_data_args(s, required=False)
    s.add_argument("--test", metavar="DATA",
                   help="held-out test split (same forms as --data; a built-in spec gives its val clips, e.g. "
                        "'builtin:events?train=10&val=400&seed=1'): no search decision sees it; after the search "
                        "every final-front point and the baseline reference are evaluated on it")
    add_model_setting_args(s.add_argument_group("model settings (every trial)"))


def add_commands(sub) -> None:
    from ..models import list_models
    from ..recipes import list_recipes
    s = sub.add_parser(
        "search", help="search schedules with Ray Tune + Optuna (multi-objective: metric up, FLOPs down)",
        description="Search coarse-to-fine schedules. Starts a local Ray instance and an Optuna study in "
                    "DIR/optuna.db unless --address joins a cluster. Writes DIR/search (Tune), DIR/front.parquet, "
                    "DIR/front.png and DIR/summary.txt. Every setting, the data and every reachable schedule are "
                    "checked before Ray starts.")
    add_search_args(s)
    s.set_defaults(fn=cmd_search)

    p = sub.add_parser("pareto", help="export Pareto fronts, hypervolume and a plot from a search folder",
                       description="Read DIR/search and write the final and anytime Pareto fronts of validation "
                                   "metric (up) against training FLOPs (down). All trial-evaluation rows go to "
                                   "DIR/trials.parquet.")
    p.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    p.add_argument("--out", default=None, type=out_path, help="front table: .parquet, .csv or .json (default DIR/front.parquet)")
    p.add_argument("--plot", default=None, type=out_path, help="plot file, .png or .pdf (default DIR/front.png)")
    p.add_argument("--ref", default=None, metavar="METRIC,GFLOPS",
                   help="hypervolume reference point (default: metric 0 and 1.1x the largest FLOPs)")
    p.add_argument("--metric", choices=("val", "test"), default="val",
                   help="metric the plot shows: val, or test (needs a search run with --test); fronts are always "
                        "chosen on val")
    p.set_defaults(fn=cmd_pareto)

    c = sub.add_parser(
        "confirm", help="re-run the baseline and the top front schedules with new seeds, here or on a target setting",
        description="Re-run the baseline reference's trial and the K final-front schedules with the largest "
                    "budget-mode saving, each with N new seeds, in parallel as one Ray Tune run (DIR/confirm). Each "
                    "saving is measured against the baseline at the same seed. Writes DIR/confirm.parquet (mean and "
                    "sd per schedule), DIR/confirm_seeds.parquet, DIR/confirm.png and DIR/confirm.txt. "
                    "With --target NAME the same runs train on a target setting (another model, depth, data, recipe "
                    "or epoch budget; the rest stays the search's), phase lengths scaled so that each schedule keeps "
                    "its shape, the baseline included; the same seeds run on the search's own setting (the proxy), "
                    "reusing a plain confirm's runs where it has them. A learned schedule runs in two forms: its "
                    "controller again (a budget= or max= in epochs scaled too) and the fixed schedule it trained, "
                    "scaled. Every check (the target's model, data and schedules) runs before Ray starts and "
                    "before anything is written. Writes DIR/confirm/NAME/: confirm.txt (the transfer table: each "
                    "schedule's saving and convergence delta on the proxy and at the target, mean ± sd over seeds, "
                    "each side against its own baseline at the same seed; Kendall's tau between the two orders by "
                    "saving and by final metric; the cost line: the search's FLOPs, this confirmation's, what the "
                    "search's top pick saves per target training and after how many target trainings the search "
                    "has paid for itself), confirm.parquet, confirm_seeds.parquet, confirm.png. docs/workflow.md "
                    "walks through it.")
    c.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    c.add_argument("--top", type=positive_int, default=2, help="front schedules to re-run (default 2)")
    c.add_argument("--seeds", type=positive_int, default=3, help="new seeds per schedule (default 3)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an earlier confirm run of DIR (with --target: of DIR/confirm/NAME; a plain "
                        "--overwrite leaves the targets' folders)")
    c.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    t = c.add_argument_group("target setting (with --target; what is not given stays the search's)")
    t.add_argument("--target", metavar="NAME",
                   help="confirm on another setting, written to DIR/confirm/NAME (several targets per search)")
    t.add_argument("--model", choices=list_models(), help="the target's model")
    add_model_setting_args(t)
    t.add_argument("--data", metavar="DATA", help="the target's training data (same forms as search --data); then "
                                                  "--val, --test and --labels default to what it gives, not the search's")
    t.add_argument("--val", metavar="DATA", help="the target's validation data")
    t.add_argument("--test", metavar="DATA", help="a held-out test split: each target run's final model is evaluated "
                                                  "on it (mean ± sd per schedule)")
    t.add_argument("--labels", metavar="CSV", help="class_labels_indices.csv of the target's data")
    t.add_argument("--recipe", choices=list_recipes(),
                   help="a published recipe (docs/recipes.md) for the target: model, front end, training settings "
                        "(in place of the searched and fixed ones) and epochs; the flags given override it")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs-factor", type=positive_float, metavar="F",
                        help="the target's epoch budget as F times the search's; every phase length scales by F")
    budget.add_argument("--epochs", type=positive_float, metavar="E",
                        help="the target's epoch budget in epochs; every phase length scales by E / the search's")
    c.set_defaults(fn=cmd_confirm)

    r = sub.add_parser("report", help="one self-contained HTML page of a search",
                       description="Write DIR/report.html: the front plot, every trial's learning curve coloured "
                                   "by C with the phase transitions marked, the Table 2/3 tables, the confirm "
                                   "table when there is one, and the search settings. It opens from disk in any "
                                   "browser, with no server.")
    r.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    r.add_argument("--out", default=None, type=out_path, help="HTML file (default DIR/report.html)")
    r.set_defaults(fn=cmd_report)

    d = sub.add_parser(
        "demo", help="the main job: a 12-trial search on built-in data that learns, on 2 CPU cores in minutes",
        description=f"Search coarse-to-fine schedules on built-in data: local Ray, SQLite, space 'demo' "
                    f"(method, C sequence and phase lengths at a fixed recipe), {DEMO_DATA}, held-out test split "
                    f"{DEMO_TEST}, ast-tiny at depth {DEMO_DEPTH}, {DEMO_EPOCHS:g} epochs per trial. The sizes are "
                    f"chosen to learn within about 10 minutes on 2 CPU cores: depth {DEMO_DEPTH} (at the default "
                    f"depth of 12 an earlier demo stayed between 0.17 and 0.29 accuracy in its time budget), 64 mel bins x 256 frames (4 x 16 tokens, "
                    f"so C=2 and 4 divide the time axis), 1000 training clips and {DEMO_EPOCHS:g} epochs, with which "
                    f"the baseline reaches about 0.7 accuracy on the 10 classes (chance: 0.1), and 300 validation "
                    f"clips, so one clip moves the accuracy by 0.0033. Writes the fronts, the Table 2/3 table, the "
                    f"plot, a summary and report.html to DIR.")
    d.add_argument("--out", default="runs/demo", metavar="DIR", type=out_path)
    d.add_argument("--trials", type=positive_int, default=12)
    d.add_argument("--epochs", type=positive_float, default=DEMO_EPOCHS)
    d.add_argument("--resume", action="store_true")
    d.set_defaults(fn=cmd_demo)


def _given(a) -> dict:
    """The search flags given on the command line (those left out are None)."""
    from .._args import Parser
    probe = Parser()
    add_search_args(probe)
    return {k: getattr(a, k) for k in vars(probe.parse_args([]))
            if k not in RESUME_MAY_CHANGE and getattr(a, k) not in (None, False)}


def _settings_from_args(a):
    from ..builtin import cache_root
    from ..spaces import load_space
    from .runner import resolve_data_args, resolve_test_arg
    from .settings import SearchSettings
    flags = _given(a)
    for k, v in SEARCH_DEFAULTS.items():
        setattr(a, k, v if getattr(a, k) is None else getattr(a, k))
    space = load_space(a.space)
    data = a.data or space.data
    if not data:
        raise SpaceError(f"{space.path}: no data set; pass --data or set 'data' in the space file")
    cache = None if a.no_cache else str(cache_root() / "features")
    data_args = resolve_data_args(data, a.val, a.labels, a.task or "auto", bool(a.skip_bad), norm_arg(a.norm), cache,
                                  a.num_mel_bins, a.target_length, a.features or "fp32", a.stream_workers)
    finetune = None
    if space.objective == "masked-patch":  # a pretraining search reads audio only
        data_args["labelled"] = False
        if space.finetune:
            finetune = {**space.finetune, "data": resolve_data_args(space.finetune["data"], None, None, "auto", False,
                                                                    None, cache, None, None)}
    return SearchSettings(
        space=str(Path(space.path).resolve()), out=str(Path(a.out).resolve()), data=data_args, finetune=finetune,
        trials=a.trials, sampler=a.sampler, scheduler=a.scheduler, epochs=a.epochs, seed=a.seed,
        max_failures=a.max_failures, keep_checkpoints=a.keep_checkpoints or None,
        resources={"cpu": a.cpus_per_trial, "gpu": a.gpus_per_trial}, reuse_actors=a.reuse_actors,
        metric_target=a.metric_target, storage=a.storage, model_kwargs=given_model_settings(a),
        test=resolve_test_arg(a.test), flags=flags)


def _resumed_settings(a):
    """The settings DIR's search was started with; a flag given now must agree with them, but for
    --trials, which may raise the number of trials."""
    from ..spaces import load_space
    from .runner import num_trials
    from .settings import SearchSettings
    settings = SearchSettings.load(a.out)
    for k, v in _given(a).items():
        was = settings.flags.get(k, SEARCH_DEFAULTS.get(k))
        if v != was:
            flag = f"--{k.replace('_', '-')}"
            show = lambda x: flag if x is True else f"{flag} {x}"  # noqa: E731
            raise C2FError(f"{show(v)}: the search in {a.out} was started "
                           f"{'without it' if was is None else 'with ' + show(was)}; drop the flag to resume it, "
                           f"or start a new search in another --out")
    if a.trials is not None:
        had = num_trials(settings, load_space(settings.space))
        settings.trials = a.trials
        now = num_trials(settings, load_space(settings.space))
        if now < had:
            raise C2FError(f"--trials {a.trials}: the search in {a.out} was started with {had} trials; a resume may "
                           f"raise that number, not lower it")
        if settings.scheduler == "pbt" and now != had:
            raise C2FError(f"--trials {a.trials}: a PBT population keeps its {had} members; drop the flag")
        if now > had:
            print(f"--trials {a.trials}: raising the search from {had} to {now} trials", flush=True)
    return settings


def cmd_search(a) -> int:
    from ..io import folder_lock, remove_stale_temporaries
    out = Path(a.out)
    with folder_lock(out, f"--out {a.out}", "search"):
        remove_stale_temporaries(out)
        settings = _resumed_settings(a) if a.resume else _settings_from_args(a)
        print(f"search: {settings.space} | {settings.trials or 'default number of'} trials | sampler "
              f"{settings.sampler} | scheduler {settings.scheduler} | out {settings.out}", flush=True)
        from .runner import run_search
        try:
            run_search(settings, resume=a.resume, address=a.address)
            if settings.target_length_reason:
                print(f"target length {settings.data['target_length']} frames: {settings.target_length_reason}")
            try:
                return _export(settings.out)
            except NoResults as e:  # the folder holds the failed search: say how to go on from it
                raise NoResults(f"{e}; fix the cause, then --resume runs the failed trials again (or choose a new "
                                f"--out)") from None
        finally:
            import ray
            ray.shutdown()  # stop a local instance now, not at interpreter exit


def _export(out, front=None, plot_path=None, ref=None, metric="val") -> int:
    from ..io import atomic_write, check_writable
    from ..pareto import export, summary_text
    out = Path(out)
    front, plot_path = front or out / "front.parquet", plot_path or out / "front.png"
    for path, kinds in ((front, (".parquet", ".csv", ".json")), (plot_path, (".png", ".pdf", ".svg"))):
        if Path(path).suffix not in kinds:
            raise C2FError(f"{path}: use a file name ending in {', '.join(kinds)}")
    # read everything and check every destination first: a refusal leaves no output half-renewed
    repeats = _repeats(out)
    check_writable(out / "summary.txt", f"pareto writes trials.parquet, table.parquet and summary.txt into {out}: "
                                        f"copy the search folder to a writable place")
    for path in (front, plot_path):
        check_writable(path)
    res = export(out, front, plot_path, ref, metric=metric)
    text = summary_text(res)
    if repeats:
        text += (f"\n{repeats} sampled configurations repeated one already trained and were not trained again "
                 f"(Optuna holds them with the first one's result, user attribute repeat_of)")
    atomic_write(out / "summary.txt", text + "\n")
    print(text)
    print(f"wrote {front}, {plot_path}, {out / 'trials.parquet'}, "
          f"{out / 'table.parquet'}, {out / 'summary.txt'}")
    return 0


def _repeats(out: Path) -> int:
    """Optuna trials that repeated a configuration already trained (searcher.C2FOptunaSearch)."""
    from .searcher import load_study
    db = out / "optuna.db"
    if not db.is_file():
        return 0
    study = load_study(db)
    return sum("repeat_of" in t.user_attrs for t in study.get_trials(deepcopy=False))


def cmd_pareto(a) -> int:
    ref = None
    if a.ref:
        try:
            m, g = (float(v) for v in a.ref.split(","))
        except ValueError:
            raise C2FError(f"--ref {a.ref!r}: write METRIC,GFLOPS, e.g. 0.0,5000") from None
        if not (0 <= m <= 1) or not (g > 0 and math.isfinite(g)):
            raise C2FError(f"--ref {a.ref!r}: METRIC must be in [0, 1] and GFLOPS a finite number > 0")
        ref = (m, g * 1e9)
    return _export(a.dir, a.out, a.plot, ref, a.metric)


TARGET_FLAGS = ("model", "data", "val", "test", "labels", "recipe", "epochs_factor", "epochs")


def _target(a):
    """The Target the flags ask for, or None; a setting flag without --target is refused by name."""
    from .confirm import Target
    given = {k: getattr(a, k) for k in TARGET_FLAGS if getattr(a, k) is not None}
    kwargs = given_model_settings(a)
    if a.target is None:
        if given or kwargs:
            flag = f"--{next(iter({**given, **kwargs})).replace('_', '-')}"
            raise C2FError(f"{flag}: changes the setting, so it needs --target NAME (the runs go to DIR/confirm/NAME); "
                           f"without --target, confirm re-runs the search's own setting")
        return None
    return Target(a.target, model_kwargs=kwargs, **given)


def cmd_confirm(a) -> int:
    from ..io import folder_lock, remove_stale_temporaries
    from .confirm import EXPERIMENT, run_confirm, run_target_confirm
    out = Path(a.dir)
    if not out.is_dir():
        raise C2FError(f"{a.dir}: no such search folder; give the --out folder of a search")
    target = _target(a)
    with folder_lock(out, a.dir, "confirm"):
        remove_stale_temporaries(out)
        try:
            if target is None:
                print(run_confirm(a.dir, a.top, a.seeds, a.overwrite, a.address))
            else:
                print(run_target_confirm(a.dir, target, a.top, a.seeds, a.overwrite, a.address))
        finally:
            import ray
            ray.shutdown()
    where = out if target is None else out / EXPERIMENT / target.name
    print(f"wrote {where / 'confirm.parquet'}, {where / 'confirm_seeds.parquet'}, {where / 'confirm.png'}, "
          f"{where / 'confirm.txt'}")
    return 0


def cmd_report(a) -> int:
    from ..report import write_report
    if a.out is not None and Path(a.out).suffix != ".html":
        raise C2FError(f"{a.out}: use a file name ending in .html")
    print(f"wrote {write_report(a.dir, a.out)}")
    return 0


def cmd_demo(a) -> int:
    from .._args import Parser
    from ..report import write_report
    # the demo is a search with fixed arguments: parse them, so it keeps every search default
    parser = Parser(prog="c2f-search search")
    add_search_args(parser)
    ns = parser.parse_args(
        ["--space", "demo", "--data", DEMO_DATA, "--test", DEMO_TEST, "--depth", str(DEMO_DEPTH),
         "--trials", str(a.trials), "--epochs", str(a.epochs), "--out", a.out, "--sampler", "tpe",
         "--cpus-per-trial", "1", "--keep-checkpoints", "1"] + (["--resume"] if a.resume else []))
    print(f"demo: {a.trials} trials of the demo space on {DEMO_DATA}, ast-tiny depth {DEMO_DEPTH}, {a.epochs:g} epochs "
          f"each, {os.cpu_count()} CPUs", file=sys.stderr)
    rc = cmd_search(ns)
    print(f"wrote {write_report(a.out)}; also try: c2f-search confirm {a.out} --top 2 --seeds 3")
    return rc
