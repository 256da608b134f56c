"""Token dropping against pooling at equal epochs, several seeds, by the paper's rules.

Contenders, each trained for the same E epochs (ast-tiny at depth 2, batch 16, lr 3e-4, evaluations every half
epoch): the baseline ``none:1xE``; three avgpool schedules, of which the table's "best avgpool" is the one with
the largest mean budget-mode saving (chosen on the same seeds, which favours it); two tpatchout schedules;
(group "other patchout") fpatchout and patchout at C = 2; and two mixed schedules (pool by 4, then drop tokens at
C = 2, then full resolution).

Per contender and seed, the quantities `c2f-search pareto` prints (``pareto.trial_quantities``) against the
same-seed baseline's best epoch: budget-mode FLOPs saving (the earliest final-phase evaluation at or above the
baseline's best), convergence delta (best final-phase metric minus the baseline's best), and the best
final-phase metric. Cells are mean +- standard deviation over seeds; the saving averages the seeds that reached.

Two data sets: builtin:events, and "orders", made here (6 classes: which of two textures, a noise burst, a
harmonic tone or a click train, comes first, so the time axis matters; the rhythm set of ``learned_vs_fixed.py`` was
tried first, and its baseline was still near chance after 12 epochs of 800 clips: 0.20, chance 0.125).
Usage: python bench/patchout_accuracy.py [--data events orders] [--groups ...] [--seeds 3] [--epochs 10] [--train 600]
       [--val 200] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from c2f_search.analysis.formatting import format_values


def schedules(E: float) -> dict[str, list[str]]:
    """Contender groups at E epochs: coarse phases take 25% (one phase) or 15% each (two), as in the paper."""
    one, two = round(0.25 * E, 3), round(0.15 * E, 3)
    rest1, rest2 = round(E - one, 3), round(E - 2 * two, 3)
    return {
        "baseline": [f"none:1x{E:g}"],
        "avgpool": [
            f"avgpool:2x{one:g},1x{rest1:g}",
            f"avgpool:4x{one:g},1x{rest1:g}",
            f"avgpool:4x{two:g},2x{two:g},1x{rest2:g}",
        ],
        "tpatchout": [f"tpatchout:4x{one:g},1x{rest1:g}", f"tpatchout:4x{two:g},2x{two:g},1x{rest2:g}"],
        "other patchout": [f"fpatchout:2x{one:g},1x{rest1:g}", f"patchout:2x{one:g},1x{rest1:g}"],
        "mixed": [
            f"avgpool:4x{two:g},tpatchout:2x{two:g},1x{rest2:g}",
            f"avgpool:4x{two:g},patchout:2x{two:g},1x{rest2:g}",
        ],
    }


GROUPS = ["avgpool", "tpatchout", "other patchout", "mixed"]


def run(schedule: str, data, seed: int, cfg_kw: dict, done: Path) -> list[dict]:
    """One training's records; kept in `done` as it finishes, so a benchmark stopped half-way resumes."""
    from c2f_search import Run, TrainConfig
    from c2f_search.analysis.rows import with_schedule_columns
    from c2f_search.files import atomic_write

    f = done / f"{schedule.replace(':', '_').replace(',', '__')}#{seed}.json"
    if f.is_file():
        return with_schedule_columns(json.loads(f.read_text()))
    recs = Run(TrainConfig(schedule, seed=seed, **cfg_kw), data, "cpu").fit()
    recs = [{**r, "trial_id": f"{schedule}#{seed}", "status": "finished", "seed": seed} for r in recs]
    atomic_write(f, json.dumps(recs, default=str))
    return with_schedule_columns(recs)


def mean_sd(xs: list[float], scale: float = 1.0, digits: int = 3, sign: str = "") -> str:
    return format_values(xs, scale, digits, sign=sign, missing="-")


def bench(name: str, data, seeds: int, E: float, cfg_kw: dict, only: list[str], done: Path) -> dict:
    from c2f_search.analysis.pareto import baseline_reference, trial_quantities

    groups, t0 = {g: s for g, s in schedules(E).items() if g in only or g == "baseline"}, time.time()
    done.mkdir(parents=True, exist_ok=True)
    quantities: dict[str, list[dict]] = {}
    for seed in range(seeds):
        base = run(groups["baseline"][0], data, seed, cfg_kw, done)
        ref = baseline_reference({"base": base})
        for group in groups.values():
            for s in group:
                rows = base if s == groups["baseline"][0] else run(s, data, seed, cfg_kw, done)
                quantities.setdefault(s, []).append(trial_quantities(rows, ref))
                print(
                    f"{name} seed {seed} {s}: best {quantities[s][-1]['best_final_metric']:.3f} saving "
                    f"{quantities[s][-1]['flops_saving']}",
                    flush=True,
                )
    return {
        "data": name,
        "clips": [len(data.train), len(data.val)],
        "epochs": E,
        "seeds": seeds,
        "groups": groups,
        "quantities": quantities,
        "wall_s": time.time() - t0,
    }


def table(res: dict) -> list[str]:
    q, groups = res["quantities"], res["groups"]

    def mean_saving(s):
        got = [x["flops_saving"] for x in q[s] if x["budget_reached"]]
        return (len(got), statistics.mean(got) if got else float("-inf"))

    best_avg = max(groups["avgpool"], key=mean_saving)
    lines = [
        "| contender | schedule | best final-phase metric | convergence delta | reached the baseline's best "
        "(seeds) | budget-mode FLOPs saving | GFLOPs (whole schedule) |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, items in groups.items():
        for s in items:
            rows = q[s]
            label = group + (" (best)" if s == best_avg else "")
            reached = [x for x in rows if x["budget_reached"]]
            lines.append(
                f"| {label} | `{s}` | {mean_sd([x['best_final_metric'] for x in rows])} | "
                f"{mean_sd([x['convergence_delta'] for x in rows], sign='+')} | {len(reached)}/{len(rows)} | "
                f"{mean_sd([x['flops_saving'] for x in reached], 100, 1)}{'%' if reached else ''} | "
                f"{mean_sd([x['total_flops'] for x in rows], 1e-9, 0)} |"
            )
    return lines


SR = 16000
TEXTURES = ("noise", "tone", "clicks")
ORDERS = [(a, b) for a in TEXTURES for b in TEXTURES if a != b]  # 6 classes: which texture comes first


def _texture(kind: str, n: int, rng) -> np.ndarray:
    t = np.arange(n) / SR
    if kind == "noise":  # band-passed noise burst
        x = np.convolve(rng.standard_normal(n), np.hanning(int(rng.uniform(4, 16))), mode="same")
    elif kind == "tone":  # a harmonic tone
        f = rng.uniform(200, 800)
        x = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * (j + 1) * t) for j in range(4))
    else:  # a click train
        x = np.zeros(n)
        x[:: int(SR / rng.uniform(15, 40))] = 1.0
        x = np.convolve(x, rng.standard_normal(40) * np.hanning(40), mode="same")
    return x * np.hanning(n) / (np.abs(x).max() + 1e-9)


def make_orders(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A folder data set (train/<class>, test/<class>): two of three textures (noise burst, harmonic tone, click
    train) one after the other, 6 classes by which comes first; random lengths, gap, pitch, level and
    background noise. A bag of patches cannot tell noise-then-tone from tone-then-noise: the classes need the
    time axis, which token dropping over time thins."""
    import soundfile as sf

    if (root / "train").is_dir():
        return root
    for split, n in (("train", n_train), ("test", n_val)):
        for i in range(n):
            first, second = ORDERS[i % len(ORDERS)]
            rng = np.random.default_rng([seed, split == "test", i])
            dur = rng.uniform(1.8, 2.4)
            y = np.convolve(rng.standard_normal(int(dur * SR)), [1.0, 0.7], mode="same") * rng.uniform(0.01, 0.03)
            a, b, gap = rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8), rng.uniform(0.05, 0.2)
            t0 = int(rng.uniform(0.0, max(0.01, dur - a - b - gap)) * SR)
            for kind, length, at in ((first, a, t0), (second, b, t0 + int((a + gap) * SR))):
                seg = _texture(kind, int(length * SR), rng) * rng.uniform(0.3, 0.6)
                y[at : at + len(seg)] += seg[: max(0, len(y) - at)]
            d = root / split / f"{first}_then_{second}"
            d.mkdir(parents=True, exist_ok=True)
            sf.write(str(d / f"{i:04d}.wav"), (y / (np.abs(y).max() + 1e-9) * 0.9).astype("float32"), SR)
    return root


def load(name: str, n_train: int, n_val: int, work: Path):
    from c2f_search.data.sets import Data

    if name == "events":
        return Data.from_specs(f"builtin:events?train={n_train}&val={n_val}", quantum=64)
    root = make_orders(work / f"orders-{n_train}-{n_val}", n_train, n_val)
    return Data.from_specs(str(root), quantum=64, num_mel_bins=64, target_length=256)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["events", "orders"], choices=["events", "orders"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=float, default=10)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--groups", nargs="+", default=GROUPS, choices=GROUPS, help="contender groups besides the baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/patchout_accuracy")
    ap.add_argument("--out", default="runs/patchout_accuracy/results.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg_kw = {
        "model_kwargs": {"depth": a.depth},
        "lr": 3e-4,
        "batch_size": 16,
        "warmup_steps": 5,
        "eval_every": "0.5epoch",
    }
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    results = [
        bench(
            name,
            load(name, a.train, a.val, work),
            a.seeds,
            a.epochs,
            cfg_kw,
            a.groups,
            work / f"runs-{name}-{a.train}-{a.val}-{a.epochs:g}",
        )
        for name in a.data
    ]
    Path(a.out).write_text(json.dumps(results, indent=1, default=str))
    for res in results:
        print(
            f"\n### {res['data']} ({res['clips'][0]} train / {res['clips'][1]} val clips, {res['epochs']:g} epochs, "
            f"{res['seeds']} seeds, {res['wall_s'] / 60:.0f} min)\n"
        )
        print("\n".join(table(res)))


if __name__ == "__main__":
    main()
