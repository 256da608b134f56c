"""``search``: settings from the flags (or, on ``--resume``, from ``search.json``, which the flags given must
agree with), the run, the export. Ray and Optuna are imported only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import C2FError, NoResults, SpaceError
from ..layout import SearchDir
from ..settings import SAMPLERS, SCHEDULERS, DataSettings, SearchSettings, check_agrees, flag, given, resolve_test
from .args import (
    add_data_args,
    add_log_arg,
    add_model_setting_args,
    finite_float,
    nonneg_float,
    nonneg_int,
    out_path,
    positive_float,
    positive_int,
    seed_int,
)
from .pareto import _export

# flags without a value default to "not given" (None), so that a resume can tell what was given
SEARCH_DEFAULTS = {
    "space": "default",
    "sampler": "auto",
    "scheduler": "auto",
    "max_failures": 1,
    "keep_checkpoints": 2,
    "seed": 0,
    "reuse_actors": True,
}
# where it runs; trials may be raised; --warm-start is read when the search starts, never on a resume
RESUME_MAY_CHANGE = ("out", "resume", "address", "trials", "warm_start")
# the search's own flags (add_search_args); with the data flags and the model settings, what a search records
SEARCH_FLAGS = (
    "space",
    "trials",
    "sampler",
    "scheduler",
    "epochs",
    "address",
    "storage",
    "cpus_per_trial",
    "gpus_per_trial",
    "reuse_actors",
    "max_failures",
    "keep_checkpoints",
    "metric_target",
    "seed",
    "test",
    "init",
    "recipe",
    "log",
    "warm_start",
)


def add_search_args(s) -> None:
    s.add_argument(
        "--space",
        help="search-space YAML: a path, or a shipped one: default (the default), paper, "
        "table1, pretrain, adaptive, patchout, demo",
    )
    s.add_argument(
        "--trials",
        type=positive_int,
        help="number of trials (default 12; grid mode: the whole grid); with "
        "--resume it may raise the number the search was started with",
    )
    s.add_argument("--out", default="runs/search", metavar="DIR", type=out_path)
    s.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="Optuna sampler; auto (the default) = grid for a 'schedules' space, gp otherwise (with "
        "--scheduler moasha, the configuration that kept the best front per unit of compute in "
        "bench/search_quality.py; docs/benchmarks.md). tpe: Optuna's multivariate TPE. gp: Optuna's "
        "GPSampler, a Gaussian process whose next trial maximises the expected hypervolume improvement (logEHVI) "
        "of the front of metric against FLOPs, after 5 random trials. It models only parameters every trial "
        "has, so with gp every trial sets every schedule parameter (method, the C values for each number of "
        "phases, every phase fraction), those its schedule does not use included (dimensions the GP learns to "
        "ignore); a categorical one enters its kernel as same-or-different (Hamming distance); a learned "
        "space's controller settings, which depend on the controller drawn, are drawn by independent TPE",
    )
    s.add_argument(
        "--scheduler",
        choices=("auto", *SCHEDULERS),
        help="auto (the default) = moasha for an open space, fifo for a grid or a pretraining space (whose "
        "metric is known only after its fine-tune); fifo runs every trial to its end; asha stops weak trials "
        "early, comparing them at equal cumulative train FLOPs; moasha stops them at the same FLOPs rungs, "
        "but keeps the front: it ranks the trials at a rung by non-dominated sorting on (metric there, up; the trial's "
        "planned total training FLOPs, down; a learned schedule's upper bound), keeps the best half by "
        "front rank (ties by crowding distance: it needs no reference point for a partial metric, and it "
        "keeps the front's spread along the FLOPs) and never stops a trial on the rung's front, nor the "
        "full-resolution baseline every saving is measured against (not with a grid space: a grid is run "
        "whole); pbt runs a population (--trials members) of a learned "
        "space (e.g. --space adaptive) under Ray's population-based training, which may lower a "
        "member's C (never raise it)",
    )
    s.add_argument(
        "--epochs",
        type=positive_float,
        help="epoch budget per trial (overrides the space's 'epochs'; grid schedules are rescaled to it)",
    )
    s.add_argument(
        "--resume",
        nargs="?",
        const=True,
        type=_resume_value,
        metavar="auto",
        help="continue the interrupted search in DIR with the settings it was started with (a flag that "
        "contradicts them is refused; DIR may have been moved or copied). --resume auto: resume where DIR "
        "holds a search, start one where it does not, so that the same command can run again after a "
        "lost driver (a Kubernetes RayJob's retry, docs/kubernetes.md)",
    )
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="check the space, the data and every setting as a search does before Ray starts, print the plan "
        "(the settings, one trial's resources, the number of trials, the training FLOPs they spend at most) "
        "and exit 0: no Ray, no trial, nothing written to DIR (with --resume: what the resume would do)",
    )
    s.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    s.add_argument("--storage", help="Tune storage path or URI (s3://..., gs://..., shared folder); default DIR")
    s.add_argument("--cpus-per-trial", type=positive_float, help="overrides the space's resources.cpu")
    s.add_argument(
        "--gpus-per-trial",
        type=nonneg_float,
        help="overrides the space's resources.gpu (fractional allowed; 0: train on CPUs); by default "
        "(auto) one GPU per trial where the cluster has GPUs, none where it has none",
    )
    s.add_argument(
        "--reuse-actors",
        action=argparse.BooleanOptionalAction,
        help="run the next trial in a finished trial's worker process (default on: no process start, "
        "imports or compile-worker start per trial; each trial still starts from a clean "
        "compiler state)",
    )
    s.add_argument(
        "--max-failures", type=nonneg_int, help="retries of a crashed trial from its last checkpoint (default 1)"
    )
    s.add_argument(
        "--keep-checkpoints",
        type=nonneg_int,
        help="checkpoints kept per trial (default 2; 0 = all) besides those the front may need, which are "
        "never deleted: phase ends and final-phase evaluations that beat every earlier one "
        "(the paper's selected epochs are among them); each holds weights and optimizer state",
    )
    s.add_argument(
        "--warm-start",
        nargs="+",
        metavar="DIR",
        help="start from earlier searches (their --out folders, read where they are now, under their lock). "
        "Same setting (data, model and its settings, init, epochs, recipe, objective, fixed settings): "
        "their finished trials enter the new study with their values, are not trained again and count in "
        "the front (marked with their folder, column warm_start). Another setting: their front's "
        "schedules are the first trials, and are trained. Their space must have this space's parameters",
    )
    s.add_argument("--metric-target", type=finite_float, help="budget mode for every trial")
    s.add_argument("--seed", type=seed_int, help="sampler seed (default 0)")
    add_log_arg(s, "every trial (one run each; MLflow: under a parent run holding the front)")
    add_data_args(s, required=False)
    s.add_argument(
        "--test",
        metavar="DATA",
        help="held-out test split (same forms as --data; a built-in spec gives its val clips, e.g. "
        "'builtin:events?train=10&val=400&seed=1'): no search decision sees it; after the search "
        "every final-front point and the baseline reference are evaluated on it",
    )
    g = s.add_argument_group("model settings (every trial)")
    add_model_setting_args(g)
    add_init_args(g, "every trial")


def add_init_args(g, who: str) -> None:
    """--init and --recipe, as train has them, for a search's trials (or a confirm's runs)."""
    from ..recipes import list_recipes

    g.add_argument(
        "--init",
        metavar="PATH|URI",
        help=f"pretrained weights {who} starts from (the paper's regime; never downloaded): a local path, a "
        "shared path or an s3:// / gs:// URI of a c2f-search checkpoint (final.pt, e.g. from 'pretrain'), a "
        "timm/DeiT state dict, an official AST checkpoint, or a Hugging Face AST folder (config.json and "
        "model.safetensors; its distillation token is dropped for a model built without --dist-token, as "
        "for a DeiT file). Its SHA-256 and size go into search.json and every trial checks the file it "
        "reads against them. Overrides the space's 'init'",
    )
    g.add_argument(
        "--recipe",
        choices=list_recipes(),
        help="a published recipe (docs/recipes.md) under the space's settings: its training settings below "
        "the space's 'fixed', its front end below the data flags, its model where the space names none; "
        "the space's epochs stay the budget. Overrides the space's 'recipe'",
    )


def add_parser(sub) -> None:
    s = sub.add_parser(
        "search",
        help="search schedules with Ray Tune + Optuna (multi-objective: metric up, FLOPs down)",
        description="Search coarse-to-fine schedules. Starts a local Ray instance and an Optuna study in "
        "DIR/optuna.db unless --address joins a cluster. Writes DIR/search (Tune), DIR/front.parquet, "
        "DIR/front.png and DIR/summary.txt. Every setting, the data and every reachable schedule are "
        "checked before Ray starts.",
    )
    add_search_args(s)
    s.set_defaults(fn=cmd_search)


def search_settings(flags: dict, out) -> SearchSettings:
    """A new search's settings from the flags given (a dict: the command line's, or the demo's)."""
    from ..models import get_family, model_settings
    from ..models.pretrained import InitFile
    from ..recipes import load_recipe
    from ..search.space import load_space

    f = {**SEARCH_DEFAULTS, **flags}
    space = load_space(f["space"], f.get("recipe"))
    recipe = load_recipe(space.recipe) if space.recipe else None
    data = DataSettings.from_dict(
        {
            **DataSettings.from_recipe(recipe),
            **DataSettings.from_flags(argparse.Namespace(**flags)),
            "labelled": space.objective != "masked-patch",  # pretraining reads audio only
        }
    )
    takes = set.intersection(*({st.name for st in get_family(m).settings} for m in space.models))
    model_kwargs = {
        **{k: v for k, v in (recipe.model_kwargs if recipe else {}).items() if k in takes},
        **{k: v for k, v in flags.items() if k in model_settings()},
    }
    init = f.get("init") or space.init
    data.train = data.train or space.data
    if not data.train:
        raise SpaceError(f"{space.path}: no data set; pass --data or set 'data' in the space file")
    finetune = None
    if space.finetune:  # a pretraining search's fine-tune reads its own labelled data
        finetune = {**space.finetune, "data": DataSettings(space.finetune["data"], cache_dir=data.cache_dir).resolved()}
    settings = SearchSettings(
        space=str(Path(space.path).resolve()),
        out=str(Path(out).resolve()),
        data=data.resolved(),
        finetune=finetune,
        trials=f.get("trials"),
        **_resolved_auto(f["sampler"], f["scheduler"], space),
        epochs=f.get("epochs"),
        seed=f["seed"],
        max_failures=f["max_failures"],
        keep_checkpoints=f["keep_checkpoints"] or None,
        resources={"cpu": f.get("cpus_per_trial"), "gpu": f.get("gpus_per_trial")},
        reuse_actors=f["reuse_actors"],
        # a folder named twice (or by two paths) is read once
        warm_start=list(dict.fromkeys(str(Path(d).resolve()) for d in f["warm_start"]))
        if f.get("warm_start")
        else None,
        metric_target=f.get("metric_target"),
        storage=f.get("storage"),
        model_kwargs=model_kwargs,
        test=resolve_test(f.get("test")),
        init=InitFile.describe(init).to_dict() if init else None,
        recipe=space.recipe,
        flags={k: v for k, v in flags.items() if k not in RESUME_MAY_CHANGE},
        trackers=checked_trackers(f.get("log"), out),
    )
    bad = settings.problem()
    if bad:
        raise SpaceError(f"{FLAG_OF.get(bad[0], flag(bad[0]))}: {bad[1]}")
    if settings.scheduler == "pbt":
        _check_population(settings, space, flags)
    if settings.scheduler == "pbt" and settings.warm_start:
        raise SpaceError("--warm-start: PBT runs no Optuna study to start from earlier trials; drop one of them")
    if settings.scheduler == "moasha" and space.is_grid:
        raise SpaceError(
            f"--scheduler moasha: {space.path} is a grid (a 'schedules' list), which is run whole as the "
            f"reference front; use an open space (e.g. --space demo), or --scheduler fifo or asha"
        )
    return settings


def _resolved_auto(sampler: str, scheduler: str, space) -> dict:
    """--scheduler and --sampler auto as recorded, so that a resume keeps them: MOASHA where trials report the
    metric they are judged by as they train, and the GP for an open space (a grid runs whole, PBT draws its own)."""
    if scheduler == "auto":
        scheduler = "fifo" if space.is_grid or space.objective != "supervised" else "moasha"
    if sampler == "auto" and scheduler != "pbt":
        sampler = "grid" if space.is_grid else "gp"
    return {"sampler": sampler, "scheduler": scheduler}


FLAG_OF = {"resources.cpu": "--cpus-per-trial", "resources.gpu": "--gpus-per-trial"}


def _check_population(settings: SearchSettings, space, flags: dict) -> None:
    """What PBT would ignore, refused: it draws its members' values itself and keeps every checkpoint (a member
    may copy any), and its bottom quantile must hold a member."""
    import math

    if flags.get("sampler") not in (None, "auto"):
        raise SpaceError(f"--sampler {flags['sampler']}: PBT draws its members' values itself; drop --sampler")
    if flags.get("keep_checkpoints") is not None:
        raise SpaceError(
            f"--keep-checkpoints {flags['keep_checkpoints']}: PBT keeps every checkpoint, since a member may copy "
            f"any of another's; drop the flag"
        )
    least = math.ceil(1 / space.pbt["quantile"])
    if settings.trials is not None and settings.trials < least:
        raise SpaceError(
            f"--trials {settings.trials}: a population whose bottom {space.pbt['quantile']:g} copies its top needs "
            f"at least {least} members; give --trials {least} or more"
        )


def checked_trackers(log: list[str] | None, out) -> list[dict]:
    """--log's trackers with their defaults (MLflow in DIR/mlruns), checked before anything runs."""
    from ..train.callbacks import tracking

    trackers = tracking.resolve([tracking.Tracker.parse(x) for x in log or []], Path(out))
    tracking.check(trackers)
    return [t.to_dict() for t in trackers]


def resumed_settings(out, flags: dict) -> SearchSettings:
    """The settings the search in `out` was started with; a flag given now must agree with them, but for
    --trials, which may raise the number of trials."""
    from ..search.runner import num_trials
    from ..search.space import load_space

    settings = SearchSettings.load(out)
    go_on = "drop the flag to resume it, or start a new search in another --out"
    check_agrees(
        settings.flags,
        flags,
        f"the search in {out} was started",
        go_on,
        may_change=(*RESUME_MAY_CHANGE, "init"),
        # what an auto resolved to, as recorded
        defaults={
            **SEARCH_DEFAULTS,
            "recipe": settings.recipe,
            "sampler": settings.sampler,
            "scheduler": settings.scheduler,
        },
    )
    if flags.get("init") is not None:
        settings.init = same_init(settings.init, flags["init"], f"the search in {out} was started", go_on)
    if flags.get("warm_start"):
        print(
            f"--warm-start: the search in {out} read its earlier searches when it started "
            f"({', '.join(w['folder'] for w in settings.warm_start or []) or 'none'}); a resume does not import again",
            flush=True,
        )
    trials = flags.get("trials")
    if trials is not None:
        had = num_trials(settings, load_space(settings.space, settings.recipe))
        settings.trials = trials
        now = num_trials(settings, load_space(settings.space, settings.recipe))
        if now < had:
            raise C2FError(
                f"--trials {trials}: the search in {out} was started with {had} trials; a resume may "
                f"raise that number, not lower it"
            )
        if settings.scheduler == "pbt" and now != had:
            raise C2FError(f"--trials {trials}: a PBT population keeps its {had} members; drop the flag")
        if now > had:
            print(f"--trials {trials}: raising the search from {had} to {now} trials", flush=True)
    if settings.trackers:  # its trackers must still be there (a server, a package) before a trial runs
        from ..train.callbacks import tracking

        tracking.check([tracking.Tracker(t["kind"], t["target"]) for t in settings.trackers])
    return settings


def _finish_trackers(settings: SearchSettings, status: str) -> None:
    if settings.trackers:
        from ..search.trackers import finish_parent

        folder = SearchDir(settings.out)
        finish_parent(settings.trackers, [folder.front, folder.front_plot, folder.summary], status)


def same_init(recorded: dict | None, given_init: str, was: str, go_on: str) -> dict:
    """The recorded init at the place `given_init` names: the same file (by hash) moved is taken, another
    one is refused."""
    from ..models.pretrained import InitFile

    now = InitFile.describe(given_init)
    if recorded is None:
        raise C2FError(f"--init {given_init}: {was} from random weights; {go_on}")
    if now.sha256 != recorded["sha256"]:
        raise C2FError(
            f"--init {given_init}: {was} from another init, {recorded['uri']} (SHA-256 "
            f"{recorded['sha256'][:12]}..., this file's is {now.sha256[:12]}...); {go_on}"
        )
    return {**recorded, "read_from": now.uri}  # the recorded uri stays: it is part of every trial's identity


def _resume_value(v: str) -> str:
    if v != "auto":
        raise argparse.ArgumentTypeError(f"{v!r}: give --resume alone, or --resume auto")
    return v


def cmd_search(a) -> int:
    from ..models import model_settings

    flags = given(a, (*SEARCH_FLAGS, *DataSettings.FLAGS, *model_settings()))
    if a.resume == "auto":
        a.resume = SearchDir(a.out).is_search()
        print(f"--resume auto: {'resuming the search' if a.resume else 'no search yet, starting one'} in {a.out}")
    if a.dry_run:
        from ..search.runner import plan_search

        plan_search(resumed_settings(a.out, flags) if a.resume else search_settings(flags, a.out), a.resume, a.address)
        return 0
    return run(flags, a.out, a.resume, a.address)


def run(flags: dict, out, resume: bool = False, address: str | None = None) -> int:
    """Run (or resume) the search in `out` with the flags given; then export its fronts."""
    from ..files import folder_lock, remove_stale_temporaries

    with folder_lock(SearchDir(out).lock, f"--out {out}", "search"):
        remove_stale_temporaries(Path(out))
        settings = resumed_settings(out, flags) if resume else search_settings(flags, out)
        print(
            f"search: {settings.space} | {settings.trials or 'default number of'} trials | sampler "
            f"{settings.sampler} | scheduler {settings.scheduler} | out {settings.out}",
            flush=True,
        )
        from ..search.runner import ray_session, run_search

        with ray_session():
            run_search(settings, resume=resume, address=address)
            if settings.target_length_reason:
                print(f"target length {settings.data.target_length} frames: {settings.target_length_reason}")
            try:
                rc = _export(settings.out, failed_is_error=True)
                _finish_trackers(settings, "FINISHED" if rc == 0 else "FAILED")
                return rc
            except NoResults as e:  # the folder holds the failed search: say how to go on from it
                _finish_trackers(settings, "FAILED")
                raise NoResults(
                    f"{e}; fix the cause, then --resume runs the failed trials again (a setting the search was "
                    f"started with cannot change on --resume: for that, start a new --out)"
                ) from None
