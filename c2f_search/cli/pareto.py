"""``pareto``: the fronts, hypervolume, Table 2/3 and plot of a search folder (``search`` ends with the same
export)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import C2FError
from ..layout import SearchDir
from .args import out_path


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


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pareto",
        help="export Pareto fronts, hypervolume and a plot from a search folder",
        description="Read DIR/search and write the final and anytime Pareto fronts of validation "
        "metric (up) against training FLOPs (down). All trial-evaluation rows go to "
        "DIR/trials.parquet.",
    )
    p.add_argument("dir", metavar="DIR", help="the --out folder of a search")
    p.add_argument(
        "--out", default=None, type=out_path, help="front table: .parquet, .csv or .json (default DIR/front.parquet)"
    )
    p.add_argument("--plot", default=None, type=out_path, help="plot file, .png or .pdf (default DIR/front.png)")
    p.add_argument(
        "--ref",
        default=None,
        metavar="METRIC,GFLOPS",
        help="hypervolume reference point (default: metric 0 and 1.1x the largest FLOPs)",
    )
    p.add_argument(
        "--metric",
        choices=("val", "test"),
        default="val",
        help="metric the plot shows: val, or test (needs a search run with --test); fronts are always chosen on val",
    )
    p.set_defaults(fn=cmd_pareto)


def _export(out, front=None, plot_path=None, ref=None, metric="val", failed_is_error=False) -> int:
    """Write the fronts, tables and summary; exit code 1 where `failed_is_error` and a trial failed."""
    from ..analysis.pareto import export, summary_text
    from ..files import atomic_write, check_writable

    folder = SearchDir(out)
    front, plot_path = front or folder.front, plot_path or folder.front_plot
    for path, kinds in ((front, (".parquet", ".csv", ".json")), (plot_path, (".png", ".pdf", ".svg"))):
        if Path(path).suffix not in kinds:
            raise C2FError(f"{path}: use a file name ending in {', '.join(kinds)}")
    # read everything and check every destination first: a refusal leaves no output half-renewed
    repeats = _repeats(folder)
    written = (folder.trials, folder.table, folder.summary)
    check_writable(
        folder.summary,
        f"pareto writes {', '.join(f.name for f in written)} into {out}: copy the search folder to a writable place",
    )
    for path in (front, plot_path):
        check_writable(path)
    res = export(out, front, plot_path, ref, metric=metric)
    text = summary_text(res)
    if repeats:
        text += (
            f"\n{repeats} sampled configurations repeated one already trained and were not trained again "
            f"(Optuna holds them with the first one's result, user attribute repeat_of)"
        )
    atomic_write(folder.summary, text + "\n")
    print(text)
    print(f"wrote {', '.join(map(str, (front, plot_path, *written)))}")
    failed = res["counts"]["error"]
    if failed and failed_is_error:
        print(
            f"{failed} trial{'s' * (failed > 1)} failed (the FAILED lines above say why; each trial folder in "
            f"{folder.path / folder.EXPERIMENT} keeps its error.txt): fix the cause, then --resume runs "
            f"{'them' if failed > 1 else 'it'} again",
            file=sys.stderr,
        )
        return 1
    return 0


def _repeats(folder: SearchDir) -> int:
    """Optuna trials that repeated a configuration already trained (searcher.C2FOptunaSearch)."""
    from ..search.searcher import load_study

    if not folder.study.is_file():
        return 0
    study = load_study(folder.study)
    return sum("repeat_of" in t.user_attrs for t in study.get_trials(deepcopy=False))
