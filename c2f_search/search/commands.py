"""``search``, ``pareto`` and ``demo`` commands. Ray and Optuna are imported only when they run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .._args import (add_data_args, finite_float, nonneg_int, norm_arg, positive_float, positive_int)
from ..errors import C2FError, SpaceError

DEMO_DATA = "builtin:events?train=600&val=200"
SAMPLERS = ("auto", "tpe", "nsga2", "random", "grid")


def add_search_args(s) -> None:
    s.add_argument("--space", default="default", help="search-space YAML: a path, or 'default' / 'paper' (shipped)")
    s.add_argument("--trials", type=positive_int, help="number of trials (default 12; grid mode: the whole grid)")
    s.add_argument("--out", default="runs/search", metavar="DIR")
    s.add_argument("--sampler", default="auto", choices=SAMPLERS,
                   help="Optuna sampler; auto = grid for a 'schedules' space, TPE otherwise")
    s.add_argument("--scheduler", default="fifo", choices=("fifo", "asha"),
                   help="asha stops weak trials early, comparing them at equal cumulative train FLOPs")
    s.add_argument("--epochs", type=positive_float, help="epoch budget per trial (overrides the space's 'epochs'; "
                                                           "grid schedules are rescaled to it)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted search in DIR")
    s.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    s.add_argument("--storage", help="Tune storage path or URI (s3://..., gs://..., shared folder); default DIR")
    s.add_argument("--cpus-per-trial", type=positive_float, help="overrides the space's resources.cpu")
    s.add_argument("--gpus-per-trial", type=positive_float,
                   help="overrides the space's resources.gpu (fractional allowed)")
    s.add_argument("--max-failures", type=nonneg_int, default=1, help="retries of a crashed trial from its last checkpoint")
    s.add_argument("--keep-checkpoints", type=nonneg_int, default=2,
                   help="checkpoints kept per trial (0 = all); each holds weights and optimizer state")
    s.add_argument("--metric-target", type=finite_float, help="budget mode for every trial")
    s.add_argument("--seed", type=nonneg_int, default=0, help="sampler seed")
    add_data_args(s, required=False)
    s.add_argument("--depth", type=positive_int, help="transformer depth (default: the model's, 12)")


def add_commands(sub) -> None:
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
    p.add_argument("--out", default=None, help="front table: .parquet, .csv or .json (default DIR/front.parquet)")
    p.add_argument("--plot", default=None, help="plot file, .png or .pdf (default DIR/front.png)")
    p.add_argument("--ref", default=None, metavar="METRIC,GFLOPS",
                   help="hypervolume reference point (default: metric 0 and 1.1x the largest FLOPs)")
    p.set_defaults(fn=cmd_pareto)

    d = sub.add_parser("demo", help="the main job: a 12-trial search on built-in data, local Ray, ast-tiny",
                       description=f"Run a small search on the embedded default: local Ray, SQLite, "
                                   f"{DEMO_DATA}, ast-tiny, about 10 minutes on 2 CPU cores. Writes the Pareto "
                                   f"front, its plot and a summary to DIR.")
    d.add_argument("--out", default="runs/demo", metavar="DIR")
    d.add_argument("--trials", type=positive_int, default=12)
    d.add_argument("--epochs", type=positive_float, default=2)
    d.add_argument("--resume", action="store_true")
    d.set_defaults(fn=cmd_demo)


def _settings_from_args(a):
    from ..builtin import cache_root
    from ..spaces import load_space
    from .runner import resolve_data_args
    from .settings import SearchSettings
    space = load_space(a.space)
    data = a.data or space.data
    if not data:
        raise SpaceError(f"{space.path}: no data set; pass --data or set 'data' in the space file")
    cache = None if a.no_cache else str(cache_root() / "features")
    return SearchSettings(
        space=str(Path(space.path).resolve()), out=str(Path(a.out).resolve()),
        data=resolve_data_args(data, a.val, a.labels, a.task or "auto", bool(a.skip_bad), norm_arg(a.norm), cache,
                               a.num_mel_bins, a.target_length, a.features or "fp32", a.stream_workers),
        trials=a.trials, sampler=a.sampler, scheduler=a.scheduler, epochs=a.epochs, seed=a.seed,
        max_failures=a.max_failures, keep_checkpoints=a.keep_checkpoints or None,
        resources={"cpu": a.cpus_per_trial, "gpu": a.gpus_per_trial}, metric_target=a.metric_target,
        storage=a.storage, model_kwargs={"depth": a.depth} if a.depth is not None else {})


def cmd_search(a) -> int:
    from .settings import SearchSettings
    if a.resume:
        settings = SearchSettings.load(a.out)
    else:
        settings = _settings_from_args(a)
    print(f"search: {settings.space} | {settings.trials or 'default number of'} trials | sampler {settings.sampler} | "
          f"scheduler {settings.scheduler} | out {settings.out}", flush=True)
    from .runner import run_search
    try:
        run_search(settings, resume=a.resume, address=a.address)
        if settings.target_length_reason:
            print(f"target length {settings.data['target_length']} frames: {settings.target_length_reason}")
        return _export(settings.out)
    finally:
        import ray
        ray.shutdown()  # stop a local instance now, not at interpreter exit


def _export(out, front=None, plot_path=None, ref=None) -> int:
    from ..pareto import export, summary_text
    out = Path(out)
    for path, kinds in ((front, (".parquet", ".csv", ".json")), (plot_path, (".png", ".pdf", ".svg"))):
        if path is not None and Path(path).suffix not in kinds:
            raise C2FError(f"{path}: use a file name ending in {', '.join(kinds)}")
    res = export(out, front or out / "front.parquet", plot_path or out / "front.png", ref)
    text = summary_text(res)
    from ..io import atomic_write
    atomic_write(out / "summary.txt", text + "\n")
    print(text)
    print(f"wrote {front or out / 'front.parquet'}, {plot_path or out / 'front.png'}, {out / 'trials.parquet'}, "
          f"{out / 'summary.txt'}")
    return 0


def cmd_pareto(a) -> int:
    ref = None
    if a.ref:
        try:
            m, g = (float(v) for v in a.ref.split(","))
        except ValueError:
            raise C2FError(f"--ref {a.ref!r}: write METRIC,GFLOPS, e.g. 0.0,5000") from None
        if not (0 <= m <= 1) or not g > 0:
            raise C2FError(f"--ref {a.ref!r}: METRIC must be in [0, 1] and GFLOPS > 0")
        ref = (m, g * 1e9)
    return _export(a.dir, a.out, a.plot, ref)


def cmd_demo(a) -> int:
    from .._args import Parser
    # the demo is a search with fixed arguments: parse them, so it keeps every search default
    parser = Parser(prog="c2f-search search")
    add_search_args(parser)
    ns = parser.parse_args(
        ["--space", "default", "--data", DEMO_DATA, "--trials", str(a.trials), "--epochs", str(a.epochs),
         "--out", a.out, "--sampler", "tpe", "--cpus-per-trial", "1", "--keep-checkpoints", "1"]
        + (["--resume"] if a.resume else []))
    print(f"demo: {a.trials} trials of the default space on {DEMO_DATA}, ast-tiny, {a.epochs:g} epochs each, "
          f"{os.cpu_count()} CPUs", file=sys.stderr)
    return cmd_search(ns)
