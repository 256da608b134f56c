"""Time one training step per sample at C = 1, 2, 4 for each method, next to the FLOPs ratio.

Measures side by side in one process (interleaved repeats, median) because the machine is shared.
Also measures the data path (feature batch -> compress -> SpecAugment -> normalize) in samples/s.
Usage: python bench/step_time.py [--models ast-tiny ast-small] [--repeats 5] [--out docs/benchmarks.md]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from c2f_search.compress import compress
from c2f_search.flops import train_flops
from c2f_search.frontend import normalize, spec_augment
from c2f_search.transfer import build_for_phase

METHODS = ["fshift", "avgpool", "maxpool", "patch-bl", "patch-pi"]


def step_time(model, x, y, opt):
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["ast-tiny", "ast-small"])
    ap.add_argument("--mel", type=int, default=128)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    F, T, B = a.mel, a.frames, a.batch
    rows = []
    for name in a.models:
        for method in METHODS:
            setups = {}
            for C in (1, 2, 4):
                torch.manual_seed(0)
                m = build_for_phase(name, {"num_classes": 10}, method if C > 1 else "none", C, F, T)
                t_in = T if method.startswith("patch") or C == 1 else T // C
                setups[C] = (m, torch.randn(B, F, t_in), torch.randint(0, 10, (B,)),
                             torch.optim.Adam(m.parameters(), 1e-4), train_flops(m))
            for s in setups.values():  # warm-up
                step_time(*s[:4])
            times = {C: [] for C in setups}
            for _ in range(a.repeats):  # interleaved, so load hits every C alike
                for C, s in setups.items():
                    times[C].append(step_time(*s[:4]) / B)
            t1, f1 = statistics.median(times[1]), setups[1][4]
            for C in (2, 4):
                tc, fc = statistics.median(times[C]), setups[C][4]
                rows.append((name, method, C, t1 * 1e3, tc * 1e3, 1 - fc / f1, 1 - tc / t1))
    # data path throughput (pooling is the only method that computes on the batch)
    x = np.random.randn(512, F, T).astype("float32")
    n = np.full(512, T)
    t = time.perf_counter()
    for i in range(0, 512, B):
        xb = compress("avgpool", 2, torch.from_numpy(x[i:i + B]), torch.from_numpy(n[i:i + B]))
        normalize(spec_augment(xb, 24, 48), -4.27, 4.57)
    loader = 512 / (time.perf_counter() - t)
    lines = [f"Step time per sample (forward+backward+Adam, batch {B}, {F} mel x {T} frames, CPU, "
             f"{torch.get_num_threads()} threads, median of {a.repeats} interleaved repeats).", "",
             "| model | method | C | ms/sample C=1 | ms/sample C | FLOPs saving | time saving | time/FLOPs saving |",
             "|---|---|---|---|---|---|---|---|"]
    for name, method, C, t1, tc, fs, ts in rows:
        lines.append(f"| {name} | {method} | {C} | {t1:.2f} | {tc:.2f} | {100 * fs:.1f}% | {100 * ts:.1f}% | {ts / fs:.2f} |")
    model_sps = 1e3 / min(r[4] for r in rows)  # the fastest step is the one the loader must keep up with
    lines += ["", f"Data path (feature batch -> avgpool C=2 -> SpecAugment -> normalize): {loader:.0f} samples/s; "
              f"fastest model step (any C): {model_sps:.0f} samples/s."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
