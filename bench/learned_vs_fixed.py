"""Learned against fixed coarse-to-fine schedules at equal training compute.

Contenders, each given the same budget B = the FLOPs of the baseline's E full-resolution epochs:
  * the best fixed schedule of a default-space search (Ray Tune + Optuna, one seed), re-run per seed;
  * the paper grid's best schedule (its 15 coarse-to-fine schedules at E epochs, one seed), re-run per seed;
  * the plateau controller and the probe controller on fshift:4xauto,2xauto,1xF; each run's trained schedule
    is then re-run with its final phase lengthened to the budget (less the probes' FLOPs, which are added);
  * PBT: a population of learned members (``search --scheduler pbt``); its best member is reported, and
    the population's total compute beside it.
A fixed schedule keeps its coarse phases and its final phase is lengthened to spend the whole budget.
Per contender and seed: the best final-phase metric, the FLOPs at the earliest final-phase evaluation at or
above the same-seed baseline's best (the paper's budget mode) and the saving against the baseline's FLOPs
there, the hypervolume of its (metric, FLOPs) evaluations against a common reference, and wall time.

Two data sets: builtin:events, and "rhythms", made here (8 classes of click and pip rhythms, which need the
time axis; none of the tests tune to it).

Usage: python bench/learned_vs_fixed.py [--data events rhythms] [--seeds 3] [--epochs 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from c2f_search.analysis.formatting import format_values

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SR = 16000
RHYTHMS = {  # onset times within a bar, in fractions of the bar
    "isochronous_4": [0, 0.25, 0.5, 0.75],
    "isochronous_6": [i / 6 for i in range(6)],
    "swing": [0, 0.33, 0.5, 0.83],
    "gallop": [0, 0.125, 0.25, 0.5, 0.625, 0.75],
    "accelerando": [0, 0.3, 0.52, 0.68, 0.8, 0.88, 0.94],
    "ritardando": [0, 0.06, 0.14, 0.26, 0.42, 0.64, 0.94],
    "syncopated": [0, 0.375, 0.5, 0.875],
    "triplet_pairs": [0, 0.083, 0.333, 0.417, 0.667, 0.75],
}


def make_rhythms(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A folder data set (train/<class>, test/<class>): two bars of a rhythm of pips, random tempo, pitch,
    pip length, level and background noise."""
    import soundfile as sf

    if (root / "train").is_dir():
        return root
    for split, n in (("train", n_train), ("test", n_val)):
        for i in range(n):
            k = i % len(RHYTHMS)
            name = list(RHYTHMS)[k]
            rng = np.random.default_rng([seed, split == "test", i])
            dur = rng.uniform(1.6, 2.4)
            y = np.convolve(rng.standard_normal(int(dur * SR)), [1.0, 0.8], mode="same") * 0.02
            bar = dur / 2 * rng.uniform(0.9, 1.0)
            f0, pip = rng.uniform(500, 2000), rng.uniform(0.02, 0.05)
            start = rng.uniform(0, dur - 2 * bar)
            for b in range(2):
                for o in RHYTHMS[name]:
                    t0 = int((start + (b + o) * bar) * SR)
                    t = np.arange(int(pip * SR)) / SR
                    tone = np.sin(2 * np.pi * f0 * t) * np.hanning(len(t)) * rng.uniform(0.3, 0.6)
                    y[t0 : t0 + len(t)] += tone[: max(0, len(y) - t0)]
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            sf.write(str(d / f"{i:04d}.wav"), (y / (np.abs(y).max() + 1e-9) * 0.9).astype("float32"), SR)
    return root


def records_summary(recs: list[dict], ref: dict | None, budget: float) -> dict:
    """Best final-phase metric, the paper's budget-mode reach against `ref` (same-seed baseline's best
    epoch), hypervolume of the run's evaluations, wall time."""
    from c2f_search.analysis.pareto import hypervolume_2d
    from c2f_search.schedule import record_schedule

    final_C = record_schedule(recs[0]["schedule"]).phases[-1].C
    fin = [r for r in recs if r["C"] == final_C]
    out = {
        "best": max(r["val_metric"] for r in fin),
        "flops": recs[-1]["train_flops"],
        "wall_s": recs[-1]["wall_time_s"],
        "trained": recs[-1].get("trained") or recs[-1]["schedule"],
        "hv": hypervolume_2d([(r["val_metric"], r["train_flops"]) for r in recs], (0.0, 1.1 * budget)) / 1e9,
    }
    hit = next((r for r in fin if ref is not None and r["val_metric"] >= ref["val_metric"]), None)
    out["reach_flops"] = hit["train_flops"] if hit else None
    out["saving"] = 1 - hit["train_flops"] / ref["train_flops"] if hit else None
    return out


def run_core(cfg_kw: dict, schedule: str, data, seed: int, **extra) -> list[dict]:
    from c2f_search import Run, TrainConfig

    return list(Run(TrainConfig(schedule, seed=seed, **cfg_kw, **extra), data, "cpu").records())


def stretch(schedule: str, budget: float, flops) -> str:
    """The schedule with its final phase lengthened (or shortened) to spend `budget` FLOPs;
    `flops(method, C)` is one epoch's training FLOPs."""
    from dataclasses import replace

    from c2f_search.schedule import Schedule, parse_schedule

    s = parse_schedule(schedule)
    coarse = sum(p.epochs * flops(p.method, p.C) for p in s.phases[:-1])
    final = max(0.1, (budget - coarse) / flops(s.phases[-1].method, 1))
    return str(Schedule(s.method, (*s.phases[:-1], replace(s.phases[-1], epochs=round(final, 3)))))


def learned_at_budget(cfg_kw: dict, learned: str, rule: str, data, seed: int, budget: float, flops) -> list[dict]:
    """A learned run given the whole budget: the controller decides the coarse phases, then its trained
    schedule (which re-runs them exactly) is re-run with the final phase lengthened to spend `budget`
    less what the controller spent on itself (losing probes), which is added to every record's FLOPs.
    Wall time adds the learned run's time in that same FLOPs share."""
    first = run_core(cfg_kw, learned, data, seed, transition=rule)
    own = first[-1]["controller_flops"] or 0.0
    recs = run_core(cfg_kw, stretch(first[-1]["trained"], budget - own, flops), data, seed)
    own_s = first[-1]["wall_time_s"] * own / first[-1]["train_flops"]
    for r in recs:
        r["train_flops"] += own
        r["wall_time_s"] += own_s
    recs[-1]["trained"] = f"{first[-1]['trained']} (learned) -> {recs[-1]['schedule']}"
    return recs


def search_best(
    data_spec: str,
    space: str,
    epochs: float,
    cfg_kw: dict,
    out: Path,
    trials: int | None,
    scheduler: str = "fifo",
    mel: int | None = None,
) -> list[dict]:
    """Run a search (real Ray), or reuse the one a previous run of this script finished in `out`;
    returns the rows of its trials."""
    import ray

    from c2f_search.analysis.rows import load_rows
    from c2f_search.search.runner import SearchSettings, resolve_data_args, run_search

    if (out / "finished").exists():
        return load_rows(out).to_pylist()
    st = SearchSettings(
        space=space,
        out=str(out),
        trials=trials,
        epochs=epochs,
        scheduler=scheduler,
        data=resolve_data_args(data_spec, None, None, "auto", False, None, None, mel, None),
        model_kwargs=cfg_kw["model_kwargs"],
        resources={"cpu": 1},
        keep_checkpoints=1,
    )
    try:
        run_search(st)
    finally:
        ray.shutdown()
    (out / "finished").write_text("")
    return load_rows(out).to_pylist()


def space_file(out: Path, body: str) -> str:
    p = out / f"space-{abs(hash(body)) % 10**8}.yaml"
    p.write_text(body)
    return str(p)


def bench(name: str, data_spec: str, seeds: int, E: float, work: Path) -> dict:
    from c2f_search.analysis.rows import by_trial
    from c2f_search.data.sets import Data
    from c2f_search.search.space import load_space

    hp = {"lr": 3e-4, "batch_size": 16, "warmup_steps": 5}
    cfg_kw = {"model_kwargs": {"depth": 2}, **hp, "eval_every": "0.5epoch"}
    fixed = "{batch_size: 16, lr: 3.0e-4, warmup_steps: 5, eval_every: 0.5epoch}"
    data = (
        Data.from_specs(data_spec, quantum=64)
        if data_spec.startswith("builtin:")
        else Data.from_specs(data_spec, quantum=64, num_mel_bins=64)
    )
    from c2f_search import TrainConfig
    from c2f_search.train.ledger import FlopsLedger

    @functools.cache
    def epoch_flops(method: str, C: int) -> float:
        """Training FLOPs of one epoch of `method` at C, as a run's own ledger counts them."""
        return FlopsLedger.for_config(TrainConfig(f"{method}:1x1", **cfg_kw), data).epoch_flops(C, method)

    spe = FlopsLedger.for_config(TrainConfig("none:1x1", **cfg_kw), data).steps_per_epoch

    budget = E * epoch_flops("none", 1)
    res, t0 = {"data": name, "clips": [len(data.train), len(data.val)], "budget_epochs": E}, time.time()
    base = {s: run_core(cfg_kw, f"none:1x{E:g}", data, s) for s in range(seeds)}
    refs = {s: max(recs, key=lambda r: (r["val_metric"], -r["step"])) for s, recs in base.items()}
    rows = {"baseline": {s: records_summary(base[s], refs[s], budget) for s in range(seeds)}}
    # the default space's best fixed schedule (one search, seed 0), re-run at every seed with the same budget
    d_rows = search_best(
        data_spec,
        space_file(
            work,
            f"epochs: {E}\nspace:\n  method: [fshift, avgpool, maxpool, "
            f"patch-bl, patch-pi]\n  coarse_phases: {{low: 1, high: 2}}\n"
            f"  C_values: [4, 2]\nfixed: {fixed}\n",
        ),
        E,
        cfg_kw,
        work / f"{name}-default",
        trials=8,
        mel=data.fe.num_mel_bins,
    )
    best_default = max(
        (t for t in by_trial(d_rows).values() if t[-1]["schedule_done"]),
        key=lambda t: max(r["val_metric"] for r in t if r["C"] == 1),
    )[-1]["schedule"]
    grid = load_space("paper").grid(E)  # the baseline first, then the paper's 15 schedules
    g = {s: run_core(cfg_kw, s, data, 0) for s in grid[1:]}
    best_grid = max(g, key=lambda s: max(r["val_metric"] for r in g[s] if r["C"] == 1))
    contenders = {
        "default-space best (fixed)": stretch(best_default, budget, epoch_flops),
        "paper-grid best (fixed)": stretch(best_grid, budget, epoch_flops),
    }
    for label, sched in contenders.items():
        rows[f"{label}: {sched}"] = {
            s: records_summary(run_core(cfg_kw, sched, data, s), refs[s], budget) for s in range(seeds)
        }
    learned = f"fshift:4xauto,2xauto,1x{E / 2:g}"
    for label, rule in (
        ("plateau", f"plateau:patience=2,delta=0.005,budget={E:g}"),
        ("probe", f"probe:steps={max(2, spe // 4)},budget={E:g}"),
    ):
        rows[f"{label}: {learned}, final phase to the budget"] = {
            s: records_summary(learned_at_budget(cfg_kw, learned, rule, data, s, budget, epoch_flops), refs[s], budget)
            for s in range(seeds)
        }
    pbt = {}
    for s in range(seeds):
        body = (
            f"epochs: {E}\nspace:\n  method: [fshift]\n  coarse_phases: {{low: 2, high: 2}}\n  C_values: [4, 2]\n"
            f"  final_fraction: {{low: 0.5, high: 0.5}}\n  controller: {{plateau: {{patience: [2]}}}}\n"
            f"  lr: {{low: 1.5e-4, high: 6.0e-4, log: true}}\npbt: {{interval: 0.5, quantile: 0.25, lower_C: 0.5}}\n"
            f"fixed: {{batch_size: 16, warmup_steps: 5, eval_every: 0.5epoch, seed: {s}}}\n"
        )
        p_rows = search_best(
            data_spec,
            space_file(work, body),
            E,
            cfg_kw,
            work / f"{name}-pbt{s}",
            trials=4,
            scheduler="pbt",
            mel=data.fe.num_mel_bins,
        )
        trials = by_trial(p_rows)
        best = max(trials.values(), key=lambda t: max(r["val_metric"] for r in t if r["C"] == 1))
        summ = records_summary(best, refs[s], budget)
        summ["population_flops"] = sum(t[-1]["train_flops"] for t in trials.values())
        pbt[s] = summ
    rows["PBT best member (4 members)"] = pbt
    res["rows"], res["wall_s"] = rows, time.time() - t0
    return res


def table(results: list[dict]) -> str:
    def ms(vals, scale=1.0, digits=0, unit=""):
        return format_values(vals, scale, digits, unit, missing="did not reach")

    lines = []
    for res in results:
        lines += [
            f"### {res['data']} ({res['clips'][0]} train / {res['clips'][1]} val clips, budget "
            f"{res['budget_epochs']:g} full-resolution epochs, {res['wall_s'] / 60:.0f} min)",
            "",
            "| contender | best final-phase metric | GFLOPs to reach the baseline's best | reached (seeds) | "
            "saving vs baseline | hypervolume (metric x GFLOPs) | wall s | total GFLOPs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, per in res["rows"].items():
            v = list(per.values())
            reach = [x["reach_flops"] / 1e9 if x["reach_flops"] else None for x in v]
            total = ms([x["flops"] for x in v], 1e-9)
            if "population_flops" in v[0]:
                total += f" (population {ms([x['population_flops'] for x in v], 1e-9)})"
            lines.append(
                f"| {label} | {ms([x['best'] for x in v], digits=3)} | "
                f"{ms(reach)} | {sum(r is not None for r in reach)}/{len(v)} | "
                f"{ms([x['saving'] for x in v], 100, 1, '%')} | "
                f"{ms([x['hv'] for x in v])} | {ms([x['wall_s'] for x in v])} | "
                f"{total} |"
            )
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["events", "rhythms"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=6)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None, help="also write the raw results here")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="c2f-learned-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for d in a.data:
        spec = (
            f"builtin:events?train={a.train}&val={a.val}"
            if d == "events"
            else str(make_rhythms(work / "rhythms", a.train, a.val))
        )
        results.append(bench(d, spec, a.seeds, a.epochs, work))
        print(table(results[-1:]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    print(table(results))


if __name__ == "__main__":
    main()
