"""Search quality: the hypervolume of a search's final front as a ratio to the paper's 16-schedule grid's, at
25%, 50% and 100% of the grid's total training compute, with mean ± sd over sampler seeds.

Settings: ``demo`` (the demo's: builtin:events 1000/300 clips, ast-tiny depth 2, 5 epochs, the demo space's
fixed recipe) and ``depth4`` (the same data at depth 4: another model, where schedules rank differently).
The grid is the paper's 16 schedules (search_spaces/paper.yaml) at the setting's recipe and epochs; it has no
sampler, so it runs once per setting and is every seed's reference. Configurations: ``grid``, ``fifo-tpe``
(the default before this bench), ``asha-tpe``, ``moasha-tpe``, ``moasha-gp`` (the default since) and ``warm``
(the second setting, fifo + TPE, warm-started from the first setting's fifo-tpe search of the same seed: its
front's schedules go first).

Compute: a search's trials in the order Tune created them, each charged its training FLOPs (a stopped one what
it trained); the front at a budget is that of the finished trials whose cumulative charge fits in it.
Hypervolume: metric x FLOPs with one reference point per setting, (accuracy 0, 1.1 x the grid baseline's
training FLOPs); a point costlier than that adds nothing.

Each search's folder is kept under --out; a search already finished there is read, not run again, so the
bench can be run a piece at a time (--settings, --configs, --seeds). --quick shrinks everything (200/100
clips, depth 1 or 2, 2 epochs, 6 trials) to check the plumbing; its numbers say nothing about quality.

Usage: python bench/search_quality.py [--quick] [--settings demo depth4] [--configs ...] [--seeds 0 1 2]
       [--trials 12] [--out DIR] [--table docs/search_quality.md] [--plot docs/search_quality.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from c2f_search.analysis.formatting import format_values  # noqa: E402
from c2f_search.analysis.pareto import hypervolume_2d, pareto_front  # noqa: E402
from c2f_search.analysis.rows import by_trial, load_rows  # noqa: E402

SETTINGS = {
    "demo": {"data": "builtin:events?train=1000&val=300", "depth": 2, "epochs": 5},
    "depth4": {"data": "builtin:events?train=1000&val=300", "depth": 4, "epochs": 5},
}
QUICK = {
    "demo": {"data": "builtin:events?train=200&val=100", "depth": 1, "epochs": 2},
    "depth4": {"data": "builtin:events?train=200&val=100", "depth": 2, "epochs": 2},
}
CONFIGS = {  # name -> the search flags
    "grid": ["--sampler", "grid"],
    "fifo-tpe": ["--sampler", "tpe", "--scheduler", "fifo"],
    "asha-tpe": ["--sampler", "tpe", "--scheduler", "asha"],
    "moasha-tpe": ["--sampler", "tpe", "--scheduler", "moasha"],
    "moasha-gp": ["--sampler", "gp", "--scheduler", "moasha"],
    "warm": ["--sampler", "tpe", "--scheduler", "fifo"],  # + --warm-start: the first setting's fifo-tpe
}
FRACTIONS = (0.25, 0.5, 1.0)


def grid_space(folder: Path) -> Path:
    """The paper's grid at the demo space's fixed recipe (so the grid and the searches differ only in how they
    choose schedules)."""
    paper = yaml.safe_load((ROOT / "search_spaces" / "paper.yaml").read_text())
    demo = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    path = folder / "paper-demo-recipe.yaml"
    path.write_text(yaml.safe_dump({**paper, "name": "paper-demo-recipe", "fixed": demo["fixed"]}))
    return path


def run_search(out: Path, setting: dict, flags: list[str], env: dict, log: Path, read_only: bool) -> float | None:
    """Run one search into `out` (unless it finished there before); its wall time in seconds (0 if read; None
    if `read_only` and it has not finished)."""
    if (out / "front.parquet").is_file():
        return 0.0
    if read_only:
        return None
    args = ["--data", setting["data"], "--depth", str(setting["depth"]), "--epochs", str(setting["epochs"])]
    args += ["--cpus-per-trial", "1", "--out", str(out)]
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "c2f_search.cli", "search", *args, *flags],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        ).returncode
    if rc:
        sys.exit(f"{out}: the search failed (exit {rc}); see {log}")
    return time.perf_counter() - t


def charged(out: Path) -> list[tuple[float, tuple | None]]:
    """(training FLOPs, final point (metric, FLOPs) or None) of each trial this search trained, in the order
    Tune created them; a trial imported by --warm-start costs nothing here and comes first."""
    trials = by_trial(load_rows(out).to_pylist())
    out_ = []
    for tid in sorted(trials, key=lambda t: (trials[t][0]["warm_start"] is None, t)):
        rows = trials[tid]
        end = rows[-1]
        point = (
            (end["val_metric"], end["train_flops"]) if end["status"] == "finished" and end["schedule_done"] else None
        )
        out_.append((0.0 if end["warm_start"] else max(r["train_flops"] for r in rows), point))
    return out_


def hypervolume_at(trials, budget: float, ref) -> float:
    spent, points = 0.0, []
    for cost, point in trials:
        spent += cost
        if spent > budget * (1 + 1e-9):
            break
        if point is not None:
            points.append(point)
    front = [points[i] for i in pareto_front(points)]
    return hypervolume_2d(front, ref)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings and 6 trials: plumbing only")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=None, help="trials per searched configuration (default 12; quick 6)")
    ap.add_argument("--out", default=None, help="keep the searches here (default: a temporary folder)")
    ap.add_argument("--table", default=None, help="write the Markdown table here too")
    ap.add_argument("--plot", default=None, help="hypervolume ratio against compute, PNG")
    ap.add_argument("--read-only", action="store_true", help="tabulate the searches finished under --out; run none")
    a = ap.parse_args()
    settings = QUICK if a.quick else SETTINGS
    trials = str(a.trials or (6 if a.quick else 12))
    out = Path(a.out or tempfile.mkdtemp(prefix="search-quality-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "C2F_CACHE": os.environ.get("C2F_CACHE", str(out / "cache")),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    grid = grid_space(out)
    first = a.settings[0]
    results = {}  # (setting, config) -> [(seed, [hv ratio at each fraction], compute / grid's, wall s)]
    curves = {}  # (setting, config) -> [[hv ratio at each of 20 fractions] per seed]
    for name in a.settings:
        s = settings[name]
        g = out / name / "grid"
        g.parent.mkdir(parents=True, exist_ok=True)
        wall = run_search(g, s, ["--space", str(grid), *CONFIGS["grid"]], env, out / name / "grid.log", a.read_only)
        if wall is None:
            print(f"{name}: the grid has not finished; skipped")
            continue
        grid_trials = charged(g)
        total = sum(c for c, _ in grid_trials)
        base = max(p[1] for _, p in grid_trials if p is not None)  # the baseline is the grid's costliest schedule
        ref = (0.0, 1.1 * base)
        hv_grid = hypervolume_at(grid_trials, total, ref)
        print(f"{name}: grid {total / 1e12:.3f} TFLOPs, reference point (accuracy 0, {ref[1] / 1e9:.2f} GFLOPs), "
              f"hypervolume {hv_grid / 1e9:.4f} accuracy x GFLOPs ({wall:.0f} s)", flush=True)  # fmt: skip
        for config in a.configs:
            if config == "warm" and name == first:
                continue  # warm-starts the second setting from the first
            for seed in [0] if config == "grid" else a.seeds:
                if config == "grid":
                    folder, w = g, wall
                else:
                    folder = out / name / f"{config}-seed{seed}"
                    flags = ["--space", "demo", *CONFIGS[config], "--trials", trials, "--seed", str(seed)]
                    if config == "warm":
                        flags += ["--warm-start", str(out / first / f"fifo-tpe-seed{seed}")]
                    w = run_search(folder, s, flags, env, out / name / f"{config}-seed{seed}.log", a.read_only)
                    if w is None:
                        continue
                tr = charged(folder)
                ratios = [hypervolume_at(tr, f * total, ref) / hv_grid for f in FRACTIONS]
                results.setdefault((name, config), []).append((seed, ratios, sum(c for c, _ in tr) / total, w))
                curves.setdefault((name, config), []).append(
                    [hypervolume_at(tr, f * total, ref) / hv_grid for f in [k / 20 for k in range(1, 21)]]
                )
                print(f"  {config:<11} seed {seed}: hypervolume / grid's at 25/50/100% of its compute "
                      f"{' '.join(f'{r:.3f}' for r in ratios)}; spent {sum(c for c, _ in tr) / total:.2f} of the "
                      f"grid's compute ({w:.0f} s)", flush=True)  # fmt: skip
    table = markdown(results, a.settings)
    print(table)
    if a.table:
        Path(a.table).write_text(table + "\n")
    if a.plot:
        plot(curves, a.settings, Path(a.plot))


def markdown(results: dict, names: list[str]) -> str:
    head = "| setting | configuration | seeds | " + " | ".join(f"HV / grid's at {int(f * 100)}%" for f in FRACTIONS)
    lines = [head + " | compute spent / grid's |", "|" + "---|" * (len(FRACTIONS) + 4)]
    for (name, config), runs in results.items():
        cells = [format_values([r[1][k] for r in runs], digits=2) for k in range(len(FRACTIONS))]
        spent = format_values([r[2] for r in runs], digits=2)
        seeds = ",".join(str(r[0]) for r in runs) if config != "grid" else "-"
        lines.append(f"| {name} | {config} | {seeds} | " + " | ".join(cells) + f" | {spent} |")
    return "\n".join(lines)


def plot(curves: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    xs = [k / 20 for k in range(1, 21)]
    for ax, name in zip(axes[0], names):
        for (n, config), runs in curves.items():
            if n == name:
                ax.plot(xs, [sum(r[k] for r in runs) / len(runs) for k in range(20)], label=f"{config} ({len(runs)})")
        ax.axhline(1.2, ls=":", c="grey")
        ax.set(title=name, xlabel="compute spent / grid's total", ylabel="hypervolume / grid's", ylim=(0, None))
        ax.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight", dpi=120)


if __name__ == "__main__":
    main()
