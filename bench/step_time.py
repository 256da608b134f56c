"""Time one training step per sample at C = 1, 2, 4, next to the FLOPs ratio.

Two tables, each measured side by side in one process (interleaved repeats, median) because the
machine is shared:
  * methods:  AST with every compression method (--models, --mel x --frames, --methods); a token-dropping
    method (tpatchout, fpatchout, patchout) draws its kept tokens inside the timed step and gathers them
    after the position embedding, so the time saving includes what the draw and the gather cost;
  * families: each model family at its own published input (--families), compressed by pooling
    (frames / C) or, for SSAST, its pretraining step (masked patch modeling, masks scaled by C).
Also measures the data path (feature batch -> compress -> SpecAugment -> normalize) in samples/s.
Usage: python bench/step_time.py [--tables methods families] [--methods ...] [--repeats 5] [--batch 8] [--threads N]
"""

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from c2f_search.compress import compress, get_method
from c2f_search.data.frontend import normalize, spec_augment
from c2f_search.geometry import Geometry
from c2f_search.models.flops import kept_tokens, masked_patch_flops, train_flops
from c2f_search.models.phase import build_for_phase
from c2f_search.objectives.masked_patch import cluster_masks

METHODS = ["fshift", "avgpool", "maxpool", "patch-bl", "patch-pi", "tpatchout", "fpatchout", "patchout"]
# family: (model, mel bins, frames at C=1, method, objective)
FAMILIES = {
    "ast": ("ast-tiny", 128, 1024, "avgpool", "supervised"),
    "htsat": ("htsat", 64, 1024, "avgpool", "supervised"),
    "cnn14": ("cnn14", 64, 1024, "avgpool", "supervised"),
    "ssast": ("ssast-tiny", 128, 1024, "fshift", "pretrain"),
}


def supervised_step(model, x, y, opt):
    return torch.nn.functional.cross_entropy(model(x), y)


def patchout_step(method, C):
    """The supervised step of a token-dropping phase: the kept tokens drawn per batch, as Run draws them."""

    def loss(model, x, y, opt):
        keep = method.keep_index(C, model.token_grid, x.shape[0], x.device)
        return torch.nn.functional.cross_entropy(model(x, keep=keep), y)

    return loss


def pretrain_step(n_masked):
    def loss(model, x, y, opt):
        masks = cluster_masks(model.token_grid, n_masked, x.shape[0], x.device, torch.Generator().manual_seed(0))
        return model.masked_patch_loss(x, masks)[0]

    return loss


def step_time(loss_fn, model, x, y, opt):
    t = time.perf_counter()
    loss = loss_fn(model, x, y, opt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def measure(setups: dict, batch: int, repeats: int) -> dict:
    """Median seconds per sample of each setup {key: (loss_fn, model, x, y, opt)}, interleaved."""
    for s in setups.values():  # warm-up
        step_time(*s)
    times = {k: [] for k in setups}
    for _ in range(repeats):  # interleaved, so load hits every setup alike
        for k, s in setups.items():
            times[k].append(step_time(*s) / batch)
    return {k: statistics.median(v) for k, v in times.items()}


def _setup(name, method, C, full: Geometry, B, objective="supervised"):
    torch.manual_seed(0)
    m = build_for_phase(name, {"num_classes": 10}, method if C > 1 else "none", C, full)
    meth = get_method(method)
    frames = full.frames if method.startswith("patch") or meth.drops_tokens or C == 1 else full.frames // C
    x, y = torch.randn(B, full.num_mel_bins, frames), torch.randint(0, 10, (B,))
    opt = torch.optim.Adam(m.parameters(), 1e-4)
    if objective == "pretrain":
        n = round(400 / 512 * m.token_grid[0] * m.token_grid[1])  # SSAST's share, scaled to this phase's tokens
        return (pretrain_step(n), m, x, y, opt), masked_patch_flops(m, n, True)
    if meth.drops_at(C):
        return (patchout_step(meth, C), m, x, y, opt), train_flops(m, kept_tokens(m, meth, C))
    return (supervised_step, m, x, y, opt), train_flops(m)


def methods_table(models, methods, F, T, B, repeats) -> list[str]:
    rows = []
    for name in models:
        for method in methods:
            built = {C: _setup(name, method, C, Geometry(F, T), B) for C in (1, 2, 4)}
            t = measure({C: s for C, (s, _) in built.items()}, B, repeats)
            for C in (2, 4):
                fs, ts = 1 - built[C][1] / built[1][1], 1 - t[C] / t[1]
                rows.append(
                    f"| {name} | {method} | {C} | {t[1] * 1e3:.2f} | {t[C] * 1e3:.2f} | {100 * fs:.1f}% | "
                    f"{100 * ts:.1f}% | {ts / fs:.2f} |"
                )
    return [
        f"Step time per sample (forward+backward+Adam, batch {B}, {F} mel x {T} frames, median of {repeats} "
        f"interleaved repeats).",
        "",
        "| model | method | C | ms/sample C=1 | ms/sample C | FLOPs saving | time saving | time/FLOPs saving |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def families_table(families, B, repeats) -> list[str]:
    rows = []
    for fam in families:
        name, F, T, method, objective = FAMILIES[fam]
        built = {C: _setup(name, method, C, Geometry(F, T), B, objective) for C in (1, 2, 4)}
        t = measure({C: s for C, (s, _) in built.items()}, B, repeats)
        for C in (1, 2, 4):
            fs, ts = 1 - built[C][1] / built[1][1], 1 - t[C] / t[1]
            rows.append(
                f"| {fam} | {name} | {'pretraining' if objective == 'pretrain' else 'supervised'} | "
                f"{F}x{T} | {method if C > 1 else 'none'} | {C} | {built[C][1] / 1e9:.2f} | {t[C] * 1e3:.1f} | "
                + (f"{100 * fs:.1f}% | {100 * ts:.1f}% | {ts / fs:.2f} |" if C > 1 else "- | - | - |")
            )
    return [
        f"Each family at C = 1, 2, 4 (forward+backward+Adam, batch {B}, median of {repeats} interleaved repeats; "
        f"GFLOPs per sample from the FLOPs counter).",
        "",
        "| family | model | step | input (mel x frames) | method | C | GFLOPs/sample | ms/sample | FLOPs saving | "
        "time saving | time/FLOPs saving |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def data_path_rate(F, T, B) -> float:
    """Samples/s of the data path on the CPU: a feature batch -> avgpool C=2 -> SpecAugment -> normalize."""
    x = np.random.randn(512, F, T).astype("float32")
    n = np.full(512, T)
    t = time.perf_counter()
    for i in range(0, 512, B):
        xb = compress("avgpool", 2, torch.from_numpy(x[i : i + B]), torch.from_numpy(n[i : i + B]))
        normalize(spec_augment(xb, 24, 48), -4.27, 4.57)
    return 512 / (time.perf_counter() - t)


def data_path(F, T, B) -> str:
    return (
        f"Data path (feature batch -> avgpool C=2 -> SpecAugment -> normalize, {F} mel x {T} frames): "
        f"{data_path_rate(F, T, B):.0f} samples/s."
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", nargs="+", default=["methods", "families"], choices=["methods", "families"])
    ap.add_argument("--models", nargs="+", default=["ast-tiny", "ast-small"])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a shared machine")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--mel", type=int, default=128)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    lines = []
    if "methods" in a.tables:
        lines += methods_table(a.models, a.methods, a.mel, a.frames, a.batch, a.repeats) + [""]
    if "families" in a.tables:
        lines += families_table(a.families, a.batch, a.repeats) + [""]
    lines.append(data_path(a.mel, a.frames, a.batch))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
