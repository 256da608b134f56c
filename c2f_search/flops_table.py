"""The ``flops`` command's table: tokens and FLOPs per phase, totals, saving against ``none``. A phase that
drops tokens counts the tokens a step keeps (its model's grid is the full one)."""
from __future__ import annotations

from .compress import get_method
from .flops import kept_tokens, train_flops
from .geometry import Geometry
from .models import get_family
from .schedule import Schedule
from .transfer import build_for_phase


def flops_table(schedules: list[Schedule], model: str, num_mel_bins: int, target_length: int,
                num_classes: int, model_kwargs: dict | None = None) -> list[dict]:
    """One entry per schedule: per-phase tokens and GFLOPs, and total GFLOPs per training sample."""
    from .config import TrainConfig
    from .validate import validate
    kw = {"num_classes": num_classes, **(model_kwargs or {})}
    full = Geometry(num_mel_bins, target_length)
    rows = []
    for s in schedules:
        validate(TrainConfig(str(s), model=model, model_kwargs=model_kwargs or {}))
        get_family(model).check_geometry(model, full, s.grid_Cs)
        phases = []
        for p in s.phases:
            method = get_method(p.method)
            m = build_for_phase(model, kw, method, p.C, full, device="meta")
            f, t = getattr(m, "token_grid", (None, None))
            kept = kept_tokens(m, method, p.C)
            phases.append({"C": p.C, "method": p.method, "epochs": p.epochs, "tokens": f * t if f else None,
                           "kept_tokens": kept if kept is not None else (f * t if f else None), "grid": [f, t],
                           "gflops_per_sample_step": train_flops(m, kept) / 1e9})
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
    w = max([28, *(len(r["schedule"]) for r in rows)])
    lines = [f"{model}, {mel} mel bins x {T} frames; GFLOPs = forward+backward per sample; tokens: those a "
             f"training step sees (a token-dropping phase keeps some of its grid)",
             f"{'schedule':<{w}} {'phase':>5} {'method':<9} {'C':>3} {'tokens':<18} {'epochs':>7} {'GFLOPs/step':>12}"
             f" {'GFLOPs total':>13} {'saving':>8}"]
    for r in rows:
        for i, ph in enumerate(r["phases"]):
            last = i == len(r["phases"]) - 1
            f, t = ph["grid"]
            tokens = ("-" if not ph["tokens"] else f"{ph['tokens']} ({f}x{t})" if ph["kept_tokens"] == ph["tokens"]
                      else f"{ph['kept_tokens']} of {ph['tokens']} ({f}x{t})")
            lines.append(f"{r['schedule'] if i == 0 else '':<{w}} {i + 1:>5} {ph['method']:<9} {ph['C']:>3} {tokens:<18}"
                         f" {ph['epochs']:>7g} {ph['gflops_per_sample_step']:>12.2f}"
                         + (f" {r['gflops_per_sample_total']:>13.1f} {100 * r['saving_vs_none']:>7.1f}%" if last else ""))
    return "\n".join(lines)
