"""The ``flops`` command's table: tokens and FLOPs per phase, totals, saving against ``none``."""
from __future__ import annotations

from .flops import train_flops
from .geometry import Geometry
from .schedule import Schedule
from .checks import check_geometry
from .transfer import build_for_phase


def flops_table(schedules: list[Schedule], model: str, num_mel_bins: int, target_length: int,
                num_classes: int, model_kwargs: dict | None = None) -> list[dict]:
    """One entry per schedule: per-phase tokens and GFLOPs, and total GFLOPs per training sample."""
    from .config import TrainConfig
    from .frontend import FrontEnd
    kw = {"num_classes": num_classes, **(model_kwargs or {})}
    full = Geometry(num_mel_bins, target_length)
    rows = []
    for s in schedules:
        check_geometry(TrainConfig(str(s), model=model, model_kwargs=model_kwargs or {}),
                       FrontEnd(num_mel_bins=num_mel_bins, target_length=target_length), s.Cs)
        phases = []
        for p in s.phases:
            m = build_for_phase(model, kw, s.method, p.C, full, device="meta")
            f, t = getattr(m, "token_grid", (None, None))
            phases.append({"C": p.C, "epochs": p.epochs, "tokens": f * t if f else None, "grid": [f, t],
                           "gflops_per_sample_step": train_flops(m) / 1e9})
        total = sum(ph["epochs"] * ph["gflops_per_sample_step"] for ph in phases)
        rows.append({"schedule": str(s), "phases": phases, "epochs": s.total_epochs,
                     "gflops_per_sample_total": total})
    base = next((r for r, s in zip(rows, schedules) if s.is_baseline), None)
    for r in rows:
        if base is not None:
            r["saving_vs_none"] = 1 - r["gflops_per_sample_total"] / base["gflops_per_sample_total"]
        else:  # no baseline given: compare with none at the same number of epochs
            full = r["phases"][-1]["gflops_per_sample_step"] * r["epochs"]
            r["saving_vs_none"] = 1 - r["gflops_per_sample_total"] / full
    return rows


def format_table(rows: list[dict], model: str, mel: int, T: int) -> str:
    lines = [f"{model}, {mel} mel bins x {T} frames; GFLOPs = forward+backward per sample",
             f"{'schedule':<28} {'phase':>5} {'C':>3} {'tokens':>10} {'epochs':>7} {'GFLOPs/step':>12}"
             f" {'GFLOPs total':>13} {'saving':>8}"]
    for r in rows:
        for i, ph in enumerate(r["phases"]):
            last = i == len(r["phases"]) - 1
            lines.append((f"{r['schedule'] if i == 0 else '':<28} {i + 1:>5} {ph['C']:>3} "
                         + (f"{ph['tokens']:>4} ({ph['grid'][0]}x{ph['grid'][1]})" if ph["tokens"] else "   -")).ljust(51)
                         + f" {ph['epochs']:>7g} {ph['gflops_per_sample_step']:>12.2f}"
                         + (f" {r['gflops_per_sample_total']:>13.1f} {100 * r['saving_vs_none']:>7.1f}%" if last else ""))
    return "\n".join(lines)
