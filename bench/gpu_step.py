"""Time the training step `Run` uses on a GPU: per model, per method, per C in 1, 2, 4 and per precision,
samples/s, TFLOP/s, MFU, time saved / FLOPs saved against C = 1 and whether CUDA graphs replayed every
step (no Inductor cudagraph skip); then the input pipeline's samples/s.

The step is ``c2f_search.step.TrainStep`` (autocast, compiled with CUDA graphs unless --no-compile,
GradScaler for fp16, fused Adam), timed over --steps steps between two CUDA synchronisations after
--warmup steps (compilation and graph capture). The loader is the one `Run` uses: a memory-mapped
Arrow store -> prefetch thread -> pinned memory -> side-stream copy -> avgpool C=4, SpecAugment and
normalization on the device. With no CUDA GPU it says so and exits 0 (--device cpu checks the script).

Usage: python bench/gpu_step.py [--models ast-tiny ast-base] [--precisions fp32 tf32 bf16 fp16]
       [--methods fshift avgpool ...] [--batch 16] [--mel 128] [--frames 1024] [--out FILE.md]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from c2f_search.compress import get_method
from c2f_search.data import STORE_CHUNK_BYTES, _read_store, _write_store
from c2f_search.flops import kept_tokens, train_flops
from c2f_search.frontend import normalize, spec_augment
from c2f_search.geometry import Geometry
from c2f_search.io import atomic_write
from c2f_search.loader import Prefetcher, host_batches
from c2f_search.precision import device_name, grad_scaler, matmul_mode, peak_flops
from c2f_search.step import ClassificationLoss, TrainStep, adam, allow_recompiles
from c2f_search.transfer import build_for_phase

METHODS = ["fshift", "avgpool", "maxpool", "patch-bl", "patch-pi", "tpatchout", "fpatchout", "patchout"]
PRECISIONS = ["fp32", "tf32", "bf16", "fp16"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(name, kw, method, C, full, precision, device, a):
    """(seconds per step, train FLOPs per sample, whether CUDA graphs ran every step) of one phase's step, median
    of --repeats blocks. A token-dropping method draws its kept tokens on the device at every step, as `Run`
    does: one shape per phase, so the graph recorded at warm-up replays with each step's indices."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    meth = get_method(method)
    model = build_for_phase(name, {"num_classes": 527, **kw}, method, C, full).to(device)
    kept = kept_tokens(model, meth, C)
    keep = (lambda: meth.keep_index(C, model.token_grid, a.batch, device)) if kept is not None else (lambda: None)
    skips = counters["inductor"]["cudagraph_skips"]
    opt = adam(model.parameters(), 1e-4, 5e-7, (0.95, 0.999), device)
    step = TrainStep(model, ClassificationLoss(True), precision, device, a.compile, grad_scaler(precision, device))
    x = torch.randn(a.batch, *model.geometry.input_size, device=device)
    y = (torch.rand(a.batch, 527, device=device) < 0.01).float()
    blocks = []
    with matmul_mode(precision, device):
        for _ in range(a.warmup):
            step(x, y, opt, keep())
        for _ in range(a.repeats):
            sync(device)
            t = time.perf_counter()
            for _ in range(a.steps):
                step(x, y, opt, keep())
            sync(device)
            blocks.append((time.perf_counter() - t) / a.steps)
    graphs = step.graphs and counters["inductor"]["cudagraph_skips"] == skips
    return statistics.median(blocks), train_flops(model, kept), graphs


def loader_rate(F, T, B, device, dtype, clips=512):
    """Samples/s from a memory-mapped store to normalized, pooled, masked batches on the device."""
    x = np.random.default_rng(0).standard_normal((clips, F, T)).astype(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "store.arrow"
        chunks = np.array_split(np.arange(clips), max(1, x.nbytes // STORE_CHUNK_BYTES))  # as extraction writes
        _write_store(path, ((x[rows], np.full(len(rows), T, np.int32), rows) for rows in chunks), [])
        del x
        feats = _read_store(path, F, T)
        order = [np.random.default_rng(k).permutation(clips)[:B] for k in range(clips // B)]
        pool = get_method("avgpool")
        for k, batches in enumerate((order[:4], order)):  # the first pass warms up (lazy imports, allocator)
            sync(device)
            t = time.perf_counter()
            for xb, n, _ in Prefetcher(host_batches(feats, torch.zeros(clips, 1), batches), device):
                xb = pool.transform(xb.float(), n, 4)
                normalize(spec_augment(xb, 48, 192 // 4), -4.27, 4.57)
            sync(device)
        return len(order) * B / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["ast-tiny", "ast-base"])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    ap.add_argument("--depth", type=int, help="transformer depth (default: the model's, 12)")
    ap.add_argument("--mel", type=int, default=128)
    ap.add_argument("--frames", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=5, help="steps before timing: compilation and CUDA graph capture")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--out", help="also write the tables to this markdown file")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: bench/gpu_step.py times the training step on a GPU, so nothing was measured "
              "(bench/step_time.py times it on the CPU)")
        return 0
    device = torch.device(a.device)
    dev = device_name(device)
    # every setup timed below is one entry of the one compiled step function, all in this process
    allow_recompiles(len(a.models) * len(a.precisions) * (1 + 2 * len(a.methods)))
    full, kw = Geometry(a.mel, a.frames), ({"depth": a.depth} if a.depth else {})
    rows = []
    for name in a.models:
        for precision in a.precisions:
            peak = peak_flops(dev, precision)
            t1, f1, g1 = time_step(name, kw, "none", 1, full, precision, device, a)
            setups = [("none", 1, t1, f1, g1)] + [(m, C, *time_step(name, kw, m, C, full, precision, device, a))
                                                   for m in a.methods for C in (2, 4)]
            for method, C, t, f, graphs in setups:
                sps = a.batch / t
                tflops = f * sps / 1e12
                ratio = (1 - t / t1) / (1 - f / f1) if C > 1 else None
                rows.append((name, method, C, precision, sps, tflops, tflops * 1e12 / peak if peak else None, ratio,
                             graphs))
                print(rows[-1], file=sys.stderr, flush=True)
    loader = {dt: loader_rate(a.mel, a.frames, a.batch, device, dt) for dt in ("float32", "float16")}
    lines = [f"Device: {dev}; torch {torch.__version__}; batch {a.batch}, {a.mel} mel x {a.frames} frames, "
             f"{'compiled (CUDA graphs)' if a.compile and device.type == 'cuda' else 'compiled' if a.compile else 'eager'}"
             f", fused Adam; median of {a.repeats} blocks of {a.steps} steps after {a.warmup} warm-up steps.", "",
             "| model | method | C | precision | samples/s | TFLOP/s | MFU | time saved / FLOPs saved | CUDA graphs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, method, C, prec, sps, tf, u, r, graphs in rows:
        lines.append(f"| {name} | {method} | {C} | {prec} | {sps:.0f} | {tf:.1f} | "
                     f"{'' if u is None else f'{100 * u:.0f}%'} | {'' if r is None else f'{r:.2f}'} | "
                     f"{'yes' if graphs else 'no'} |")
    lines += ["", f"Input pipeline (memory-mapped store in the page cache -> prefetch thread -> device, avgpool C=4, "
                  f"SpecAugment, normalize), batch {a.batch}: float32 store {loader['float32']:.0f} samples/s, "
                  f"float16 store {loader['float16']:.0f} samples/s."]
    text = "\n".join(lines)
    print(text)
    if a.out:
        atomic_write(a.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
