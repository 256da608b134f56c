"""``confirm``: re-run the baseline and the top front schedules with new seeds, on the search's own setting
or, with ``--target``, on another one."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ..errors import C2FError
from ..layout import SearchDir
from ..settings import flag, given
from .args import add_log_arg, add_model_setting_args, given_model_settings, positive_float, positive_int

TARGET_FLAGS = ("model", "data", "val", "test", "labels", "recipe", "epochs_factor", "epochs")


def _target(a):
    """The Target the flags ask for, or None; a setting flag without --target is refused by name."""
    from ..search.confirm import Target

    changes, kwargs = given(a, TARGET_FLAGS), given_model_settings(a)
    if a.target is None:
        if changes or kwargs:
            raise C2FError(
                f"{flag(next(iter({**changes, **kwargs})))}: changes the setting, so it needs --target NAME "
                f"(the runs go to DIR/confirm/NAME); without --target, confirm re-runs the search's own "
                f"setting"
            )
        return None
    return Target(a.target, model_kwargs=kwargs, init=a.init, **changes)


def cmd_confirm(a) -> int:
    from ..files import folder_lock, remove_stale_temporaries
    from ..search.confirm import run_confirm, run_target_confirm
    from ..search.runner import ray_session

    out = Path(a.dir)
    if not out.is_dir():
        raise C2FError(f"{a.dir}: no such search folder; give the --out folder of a search")
    from .search import checked_trackers

    target = _target(a)
    if a.resume and a.overwrite:
        raise C2FError("--overwrite and --resume contradict each other; give one")
    with folder_lock(SearchDir(out).lock, a.dir, "confirm") if not a.dry_run else nullcontext():
        if not a.dry_run:
            remove_stale_temporaries(out)
        how = {"resume": a.resume, "dry_run": a.dry_run, "trackers": checked_trackers(a.log, out)}
        with ray_session():
            if target is None:
                print(run_confirm(a.dir, a.top, a.seeds, a.overwrite, a.address, init=a.init, **how))
            else:
                print(run_target_confirm(a.dir, target, a.top, a.seeds, a.overwrite, a.address, **how))
    if a.dry_run:
        return 0
    files = SearchDir(out).confirm if target is None else SearchDir(out).target(target.name)
    print(f"wrote {', '.join(map(str, files.outputs()))}")
    return 0


def add_parser(sub) -> None:
    from ..models import list_models
    from ..recipes import list_recipes

    c = sub.add_parser(
        "confirm",
        help="re-run the baseline and the top front schedules with new seeds, here or on a target setting",
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
        "walks through it.",
    )
    c.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    c.add_argument("--top", type=positive_int, help="front schedules to re-run (default 2)")
    c.add_argument("--seeds", type=positive_int, help="new seeds per schedule (default 3)")
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted confirm (with --target NAME: that target's) with the settings it was "
        "started with: the runs that finished are not run again. An interrupted confirm writes no result; "
        "Ctrl-C and SIGTERM stop it cleanly (exit 130 and 143)",
    )
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier confirm run of DIR (with --target: of DIR/confirm/NAME; a plain "
        "--overwrite leaves the targets' folders)",
    )
    c.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything a confirm checks before Ray starts, print the plan (the runs, one run's "
        "resources, the training FLOPs they spend at most) and exit 0: no Ray, nothing written (with "
        "--resume: what the resume would do)",
    )
    c.add_argument("--address", help="join a running Ray cluster ('auto' on the head node)")
    add_log_arg(c, "every run (one run each, tagged with its confirm folder)")
    c.add_argument(
        "--init",
        metavar="PATH|URI",
        help="pretrained weights the runs start from (as search --init). Default: the search's init, "
        "refused if the file no longer matches the SHA-256 in search.json; with --target, an init for the "
        "target's model",
    )
    t = c.add_argument_group("target setting (with --target; what is not given stays the search's)")
    t.add_argument(
        "--target",
        metavar="NAME",
        help="confirm on another setting, written to DIR/confirm/NAME (several targets per search)",
    )
    t.add_argument("--model", choices=list_models(), help="the target's model")
    add_model_setting_args(t)
    t.add_argument(
        "--data",
        metavar="DATA",
        help="the target's training data (same forms as search --data); then "
        "--val, --test and --labels default to what it gives, not the search's",
    )
    t.add_argument("--val", metavar="DATA", help="the target's validation data")
    t.add_argument(
        "--test",
        metavar="DATA",
        help="a held-out test split: each target run's final model is evaluated on it (mean ± sd per schedule)",
    )
    t.add_argument("--labels", metavar="CSV", help="class_labels_indices.csv of the target's data")
    t.add_argument(
        "--recipe",
        choices=list_recipes(),
        help="a published recipe (docs/recipes.md) for the target: model, front end, training settings "
        "(in place of the searched and fixed ones) and epochs; the flags given override it",
    )
    budget = t.add_mutually_exclusive_group()
    budget.add_argument(
        "--epochs-factor",
        type=positive_float,
        metavar="F",
        help="the target's epoch budget as F times the search's; every phase length scales by F",
    )
    budget.add_argument(
        "--epochs",
        type=positive_float,
        metavar="E",
        help="the target's epoch budget in epochs; every phase length scales by E / the search's",
    )
    c.set_defaults(fn=cmd_confirm)
