"""``demo``: the main job, a 12-trial search of the demo space on built-in data."""

from __future__ import annotations

import os
import sys

from .args import out_path, positive_float, positive_int
from .search import add_init_args, run

DEMO_DATA = "builtin:events?train=1000&val=300"


DEMO_DEPTH, DEMO_EPOCHS = 2, 5.0
DEMO_TEST = "builtin:events?train=10&val=400&seed=1"  # other clips than the data's (another seed)


def cmd_demo(a) -> int:
    from ..analysis.report import write_report

    # a search with fixed settings; every other one keeps the search's default
    flags = {
        "space": "demo",
        "data": DEMO_DATA,
        "test": DEMO_TEST,
        "depth": DEMO_DEPTH,
        "trials": a.trials,
        "epochs": a.epochs,
        "cpus_per_trial": 1.0,
        "keep_checkpoints": 1,
        **({"init": a.init} if a.init else {}),
        **({"recipe": a.recipe} if a.recipe else {}),
    }
    print(
        f"demo: {a.trials} trials of the demo space on {DEMO_DATA}, ast-tiny depth {DEMO_DEPTH}, {a.epochs:g} epochs "
        f"each, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    rc = run(flags, a.out, a.resume)
    print(f"wrote {write_report(a.out)}; also try: c2f-search confirm {a.out} --top 2 --seeds 3")
    return rc


def add_parser(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="the main job: a 12-trial search on built-in data that learns, on 2 CPU cores in minutes",
        description=f"Search coarse-to-fine schedules on built-in data: local Ray, SQLite, space 'demo' "
        f"(method, C sequence and phase lengths at a fixed recipe) under the search's defaults (MOASHA early "
        f"stopping, GP sampler), {DEMO_DATA}, held-out test split "
        f"{DEMO_TEST}, ast-tiny at depth {DEMO_DEPTH}, {DEMO_EPOCHS:g} epochs per trial. The sizes are "
        f"chosen to learn within about 10 minutes on 2 CPU cores: depth {DEMO_DEPTH} (at the default "
        f"depth of 12 an earlier demo stayed between 0.17 and 0.29 accuracy in its time budget), "
        f"64 mel bins x 256 frames (4 x 16 tokens, "
        f"so C=2 and 4 divide the time axis), 1000 training clips and {DEMO_EPOCHS:g} epochs, with which "
        f"the baseline reaches about 0.7 accuracy on the 10 classes (chance: 0.1), and 300 validation "
        f"clips, so one clip moves the accuracy by 0.0033. Writes the fronts, the Table 2/3 table, the "
        f"plot, a summary and report.html to DIR.",
    )
    d.add_argument("--out", default="runs/demo", metavar="DIR", type=out_path)
    d.add_argument("--trials", type=positive_int, default=12)
    d.add_argument("--epochs", type=positive_float, default=DEMO_EPOCHS)
    d.add_argument("--resume", action="store_true")
    add_init_args(d, "every trial")
    d.set_defaults(fn=cmd_demo)
