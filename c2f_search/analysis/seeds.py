"""Seed analysis of a ``confirm`` run: each schedule re-run with new seeds and paired, seed by seed,
with the baseline trained at the same seed. Pure analysis, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .formatting import format_mean_sd, mean_sd
from .pareto import baseline_reference, save_figure, trial_quantities
from .rows import by_trial

# the per-seed quantities a schedule's summary gives as mean and sd over its seeds
SUMMARIZED = (
    "best_final_metric",
    "final_metric",
    "convergence_delta",
    "total_flops",
    "flops_saving",
    "time_saving",
    "flops_saved",
)


def analyse_seeds(rows: pa.Table) -> tuple[list[dict], list[dict]]:
    """(per-seed rows, per-schedule summary). Each schedule's budget-mode saving at seed s is measured
    against the baseline's reference at seed s; a saving *holds* when the schedule reached that
    reference in its final phase, with fewer FLOPs, at every seed."""
    trials = by_trial(rows.to_pylist())
    src = {tid: json.loads(t[0]["config"]) for tid, t in trials.items()}
    base = {src[tid]["seed"]: {tid: t} for tid, t in trials.items() if t[0]["is_baseline"]}
    per_seed = []
    for tid, t in trials.items():
        seed = src[tid]["seed"]
        ref = baseline_reference(base.get(seed, {}))
        q = trial_quantities(t, ref)
        # a target confirmation runs a learned schedule in two forms (search.confirm): one row each
        form = {"form": src[tid]["form"]} if "form" in src[tid] else {}
        per_seed.append(
            {
                **q,
                "source_trial": src[tid].get("source_trial"),
                **form,
                "seed": seed,
                "flops_saved": None if q["budget_flops"] is None else ref["train_flops"] - q["budget_flops"],
            }
        )
    summary = []
    for key in dict.fromkeys(schedule_key(q) for q in per_seed):
        qs = sorted((q for q in per_seed if schedule_key(q) == key), key=lambda q: q["seed"])
        done = [q for q in qs if q["status"] == "finished"]
        reached = [q for q in done if q["budget_reached"]]
        row = {
            "source_trial": key[0],
            **({"form": key[1]} if key[1] else {}),
            "schedule": qs[0]["schedule"],
            "is_baseline": qs[0]["is_baseline"],
            "metric_name": qs[0]["metric_name"],
            "seeds": len(qs),
            "finished": len(done),
            "reached": len(reached),
            "holds_every_seed": bool(done)
            and len(done) == len(qs)
            and all(q["budget_reached"] and q["flops_saving"] > 0 for q in done),
        }
        for k in SUMMARIZED:
            row[f"{k}_mean"], row[f"{k}_sd"] = mean_sd([q[k] for q in done])
        summary.append(row)
    return sorted(per_seed, key=lambda q: (*schedule_key(q), q["seed"])), summary


def schedule_key(q: dict) -> tuple:
    return q["source_trial"], q.get("form") or ""


def holds_text(r: dict) -> str:
    """The 'holds at every seed' cell: the baseline is the reference each saving is measured against."""
    return "reference" if r.get("is_baseline") else "yes" if r["holds_every_seed"] else "no"


def summary_text(summary: list[dict]) -> str:
    name = summary[0]["metric_name"] if summary else "metric"
    f = lambda m, s, k=1, p=4: format_mean_sd(m, s, k, p, missing="")  # noqa: E731
    lines = [
        f"  {'schedule':<36} {'seeds':>5} {'best final ' + name + ' (mean ± sd)':>32} "
        f"{'vs baseline':>17} {'reached':>7} {'FLOPs saved % (mean ± sd)':>26} {'holds at every seed':>19}"
    ]
    for r in summary:
        lines.append(
            f"  {r['schedule']:<36} {r['finished']:>2}/{r['seeds']:<2} "
            f"{f(r['best_final_metric_mean'], r['best_final_metric_sd']):>32} "
            f"{f(r['convergence_delta_mean'], r['convergence_delta_sd']):>17} {r['reached']:>3}/{r['seeds']:<3} "
            f"{f(r['flops_saving_mean'], r['flops_saving_sd'], 100, 1):>26} "
            f"{holds_text(r):>19}"
        )
    held = [r["schedule"] for r in summary if r["holds_every_seed"] and not r["is_baseline"]]
    lines.append(
        "savings that hold at every seed (paired with the baseline at the same seed): "
        + (", ".join(held) if held else "none")
    )
    return "\n".join(lines)


def plot_seeds(per_seed: list[dict], summary: list[dict], path) -> Path:
    """Left: best final-phase metric against training FLOPs, mean ± sd over seeds. Right: the
    budget-mode FLOPs saving per schedule, mean ± sd over the seeds that reached the reference, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    cmap = plt.get_cmap("tab10")
    for k, r in enumerate(summary):
        if r["best_final_metric_mean"] is None:
            continue
        a.errorbar(
            r["total_flops_mean"] / 1e9,
            r["best_final_metric_mean"],
            yerr=r["best_final_metric_sd"],
            xerr=(r["total_flops_sd"] or 0) / 1e9,
            fmt="*" if r["is_baseline"] else "o",
            ms=10,
            capsize=4,
            color=cmap(k % 10),
            label=r["schedule"],
        )
        seeds = [q for q in per_seed if q["source_trial"] == r["source_trial"] and q["flops_saving"] is not None]
        b.bar(
            k,
            100 * (r["flops_saving_mean"] or 0),
            yerr=100 * (r["flops_saving_sd"] or 0),
            capsize=4,
            color=cmap(k % 10),
            alpha=0.6,
        )
        b.scatter([k] * len(seeds), [100 * q["flops_saving"] for q in seeds], color="k", s=12, zorder=3)
        if r["reached"] < r["seeds"]:
            b.annotate(
                f"reached {r['reached']}/{r['seeds']}",
                (k, 0),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
    name = summary[0]["metric_name"] if summary else "metric"
    a.set_xlabel("training GFLOPs (whole schedule)")
    a.set_ylabel(f"best final-phase validation {name}")
    a.set_title("mean ± sd over seeds")
    a.grid(alpha=0.3)
    a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15))
    b.axhline(0, color="k", lw=0.8)
    b.set_xticks(range(len(summary)), [r["schedule"] for r in summary], rotation=30, ha="right", fontsize=7)
    b.set_ylabel("budget-mode FLOPs saving vs same-seed baseline (%)")
    b.set_title("saving per seed (dots), mean ± sd (bars)")
    b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, path)
