"""Time one training step per sample at C = 1, 2, 4 for each method, next to the FLOPs ratio.

Two steps side by side in one process (interleaved repeats, median), since the machine is shared:
"before", the loop's step before issue 8 (foreach Adam, the loss read back every step), and "now",
``c2f_search.step.TrainStep`` as `Run` uses it on the CPU (fp32, eager, fused Adam, no host read).
Also measures the data path (feature batch -> compress -> SpecAugment -> normalize) in samples/s.
Usage: python bench/step_compare.py [--models ast-tiny ast-small] [--repeats 5] [--stat median|min] [--threads N]
"""

import argparse
import functools
import statistics
import time

import torch
from step_time import data_path_rate  # bench/ is on sys.path when run as a script

from c2f_search.geometry import Geometry
from c2f_search.models.flops import train_flops
from c2f_search.models.phase import build_for_phase
from c2f_search.objectives.supervised import ClassificationLoss
from c2f_search.train.step import TrainStep, adam

METHODS = ["fshift", "avgpool", "maxpool", "patch-bl", "patch-pi"]


def before(model, x, y, opt):
    """The step as the loop ran it before issue 8."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def step_time(step, x, y, opt):
    t = time.perf_counter()
    step(x, y, opt)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["ast-tiny", "ast-small"])
    ap.add_argument("--mel", type=int, default=128)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="min: the least contended repeat, for a machine others are loading",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads (default torch's); 1 does not stall at OpenMP barriers when another job takes a core",
    )
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    F, T, B = a.mel, a.frames, a.batch
    rows, cpu = [], torch.device("cpu")
    for name in a.models:
        for method in METHODS:
            setups = {}
            for C, kind in ((C, k) for C in (1, 2, 4) for k in ("before", "now")):
                torch.manual_seed(0)
                m = build_for_phase(name, {"num_classes": 10}, method if C > 1 else "none", C, Geometry(F, T))
                opt = (
                    torch.optim.Adam(m.parameters(), 1e-4)
                    if kind == "before"
                    else adam(m.parameters(), 1e-4, 0.0, (0.9, 0.999), cpu)
                )
                fn = (
                    functools.partial(before, m)
                    if kind == "before"
                    else TrainStep(m, ClassificationLoss(False), "fp32", cpu, False)
                )
                x = torch.randn(B, *m.geometry.input_size)
                setups[C, kind] = (fn, x, torch.randint(0, 10, (B,)), opt, train_flops(m))
            for s in setups.values():  # warm-up
                step_time(*s[:4])
            times = {k: [] for k in setups}
            for _ in range(a.repeats):  # interleaved, so load hits every C and both steps alike
                for k, s in setups.items():
                    times[k].append(step_time(*s[:4]) / B)
            stat = {"median": statistics.median, "min": min}[a.stat]
            t = {k: stat(v) for k, v in times.items()}
            f1 = setups[1, "now"][4]
            for C in (2, 4):
                fs = 1 - setups[C, "now"][4] / f1
                rows.append(
                    (
                        name,
                        method,
                        C,
                        fs,
                        *[(t[1, k] * 1e3, t[C, k] * 1e3, 1 - t[C, k] / t[1, k]) for k in ("before", "now")],
                    )
                )
    # data path throughput (pooling is the only method that computes on the batch)
    loader = data_path_rate(F, T, B)
    lines = [
        f"Step time per sample (forward+backward+Adam, batch {B}, {F} mel x {T} frames, CPU, "
        f"{torch.get_num_threads()} threads, {a.stat} of {a.repeats} interleaved repeats); before = the step "
        f"before issue 8, now = `TrainStep` (fp32, eager, fused Adam, no per-step host read).",
        "",
        "| model | method | C | FLOPs saving | ms/sample C=1 before / now | ms/sample C before / now "
        "| time saving before / now | time/FLOPs saving before / now |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, method, C, fs, (b1, bc, bs), (n1, nc, ns) in rows:
        lines.append(
            f"| {name} | {method} | {C} | {100 * fs:.1f}% | {b1:.2f} / {n1:.2f} | {bc:.2f} / {nc:.2f} | "
            f"{100 * bs:.1f}% / {100 * ns:.1f}% | {bs / fs:.2f} / {ns / fs:.2f} |"
        )
    model_sps = 1e3 / min(r[5][1] for r in rows)  # the fastest step is the one the loader must keep up with
    lines += [
        "",
        f"Data path (feature batch -> avgpool C=2 -> SpecAugment -> normalize): {loader:.0f} samples/s; "
        f"fastest model step (any C): {model_sps:.0f} samples/s.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
