"""Does coarse-to-fine save more when fine-tuning from a pretrained init than when training from scratch?

1. Pretrain: ``c2f-search train`` of the baseline (supervised) on one made set (builtin:events, seed 11).
2. Search: the same small grid of schedules (the baseline and coarse-to-fine schedules at the demo's recipe,
   ast-tiny at depth 2, 5 epochs) on another made set (builtin:events, seed 0: other clips, the demo's
   data), once with ``--init`` from step 1 and once from random weights, at each of 3 training seeds.
3. Report, per regime: the baseline's best validation metric (mean ± sd over seeds), how many coarse-to-fine
   schedules reach it by the paper's budget rule (the earliest final-phase evaluation at or above the
   same-search baseline's best), and the FLOPs savings of those that do (mean ± sd over every reaching
   schedule at every seed).

Every run uses the project's own commands (``train``, ``search``), as a user would.

Usage: python bench/pretrained_regime.py [--seeds 3] [--epochs 5] [--out FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from c2f_search.analysis.formatting import format_values

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PRETRAIN_DATA = "builtin:events?train=1000&val=300&seed=11"
SEARCH_DATA = "builtin:events?train=1000&val=300"  # the demo's: other clips than the pretraining set's
DEPTH = 2
GRID = ["fshift:2x1,1x4", "fshift:4x1.5,1x3.5", "avgpool:2x1.5,1x3.5", "patch-pi:4x1,2x1,1x3"]
FIXED = "{lr: 3.0e-4, batch_size: 16, warmup_steps: 20, seed: %d}"  # the demo's recipe


def cli(*args: str) -> None:
    t = time.time()
    print("$ c2f-search " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "c2f_search.cli", *args], check=True, stdout=subprocess.DEVNULL)
    print(f"  {time.time() - t:.0f} s", flush=True)


def space(work: Path, epochs: float, seed: int) -> Path:
    f = work / f"space-{seed}.yaml"
    grid = [f"none:1x{epochs:g}", *GRID]
    f.write_text(
        f"epochs: {epochs}\nschedules: [{', '.join(repr(s) for s in grid)}]\nfixed: {FIXED % seed}\n"
        "resources: {cpu: 1, gpu: auto}\n"
    )
    return f


def measure(folder: Path) -> dict:
    from c2f_search.analysis.pareto import analyse
    from c2f_search.analysis.rows import load_rows

    res = analyse(load_rows(folder))
    rows = [q for q in res["table"] if not q["is_baseline"]]
    return {
        "baseline": res["baseline"]["val_metric"],
        "baseline_epoch": res["baseline"]["epoch"],
        "reached": sum(bool(q["budget_reached"]) for q in rows),
        "schedules": len(rows),
        "savings": [q["flops_saving"] for q in rows if q["budget_reached"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=5.0)
    ap.add_argument("--out", type=Path, help="append the markdown table to FILE")
    ap.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="pretrained-regime-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pre = work / "pretrain"
    if not (pre / "checkpoints" / "final.pt").is_file():
        recipe = ["--lr", "3e-4", "--batch-size", "16", "--warmup-steps", "20"]
        cli("train", "--data", PRETRAIN_DATA, "--depth", str(DEPTH), "--schedule", f"none:1x{a.epochs:g}",
            *recipe, "--no-progress", "--out", str(pre))  # fmt: skip
    init = pre / "checkpoints" / "final.pt"
    results: dict = {"pretrained": [], "scratch": []}
    for seed in range(a.seeds):
        sp = space(work, a.epochs, seed)
        for regime in results:
            out = work / f"{regime}-{seed}"
            if not (out / "front.parquet").is_file():
                extra = ["--init", str(init)] if regime == "pretrained" else []
                cli("search", "--space", str(sp), "--data", SEARCH_DATA, "--depth", str(DEPTH), "--out", str(out),
                    "--keep-checkpoints", "1", *extra)  # fmt: skip
            results[regime].append(measure(out))
            print(f"{regime} seed {seed}: {results[regime][-1]}", flush=True)
    lines = [
        f"| start | baseline best accuracy | at epoch (per seed) | schedules reaching it (of {len(GRID)} per seed) "
        "| their FLOPs saving | of them saving FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for regime, ms in results.items():
        savings = [s for m in ms for s in m["savings"]]
        epochs = ", ".join(f"{m['baseline_epoch']:g}" for m in ms)
        reached = " + ".join(str(m["reached"]) for m in ms)
        lines.append(
            f"| {regime} | {format_values([m['baseline'] for m in ms])} | {epochs} | {reached} = "
            f"{sum(m['reached'] for m in ms)} of {sum(m['schedules'] for m in ms)} | "
            f"{format_values(savings, 100, 1, '%')} | {sum(s > 0 for s in savings)} |"
        )
    text = "\n".join(lines) + f"\n\n{a.seeds} seeds, {(time.time() - t0) / 60:.0f} min in all; work folder {work}\n"
    print(text)
    if a.out:
        with open(a.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
