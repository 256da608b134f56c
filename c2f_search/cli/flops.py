"""``flops``: tokens and training FLOPs per phase (the FLOPs ledger's count), totals, saving against ``none``. A
phase that drops tokens counts the tokens a step keeps (its model's grid is the full one)."""

from __future__ import annotations

import json
import math

from ..compress import get_method
from ..errors import C2FError
from ..geometry import Geometry
from ..models import get_family
from ..models.flops import kept_tokens
from ..models.phase import build_for_phase
from ..settings import train_config
from ..train.ledger import FlopsLedger
from .args import EPILOG_SCHEDULE, add_model_setting_args, given_model_settings, positive_float, positive_int


def flops_table(cfgs: list, num_mel_bins: int, target_length: int, num_classes: int) -> list[dict]:
    """One entry per TrainConfig: per-phase tokens and GFLOPs (the FLOPs ledger's count, per sample), and total
    GFLOPs per training sample."""
    full = Geometry(num_mel_bins, target_length)
    rows = []
    for cfg in cfgs:
        s, model = cfg.schedule, cfg.model
        get_family(model).check_geometry(model, full, s.grid_Cs)
        ledger = FlopsLedger.for_input(cfg, num_classes, full)
        phases = []
        for p in s.phases:
            method = get_method(p.method)
            m = build_for_phase(model, cfg.build_kwargs(num_classes), method, p.C, full, device="meta")
            f, t = getattr(m, "token_grid", (None, None))
            kept = kept_tokens(m, method, p.C)
            phases.append(
                {
                    "C": p.C,
                    "method": p.method,
                    "epochs": p.epochs,
                    "tokens": f * t if f else None,
                    "kept_tokens": kept if kept is not None else (f * t if f else None),
                    "grid": [f, t],
                    "gflops_per_sample_step": ledger.sample_flops(p.C, p.method) / 1e9,
                }
            )
        total = sum(ph["epochs"] * ph["gflops_per_sample_step"] for ph in phases)
        rows.append(
            {
                "schedule": str(s),
                "phases": phases,
                "epochs": s.total_epochs,
                "gflops_per_sample_total": total,
                "_full": ledger.sample_flops(1, "none") / 1e9,  # a full-resolution step (a coarse-only run has none)
            }
        )
    base = next((r for r, cfg in zip(rows, cfgs) if cfg.schedule.is_baseline), None)
    for r in rows:
        if base is not None:
            r["saving_vs_none"] = 1 - r["gflops_per_sample_total"] / base["gflops_per_sample_total"]
        else:  # no baseline given: compare with none at the same number of epochs
            r["saving_vs_none"] = 1 - r["gflops_per_sample_total"] / (r["_full"] * r["epochs"])
    for r in rows:
        del r["_full"]
    return rows


def format_table(rows: list[dict], model: str, mel: int, T: int) -> str:
    w = max([28, *(len(r["schedule"]) for r in rows)])
    lines = [
        f"{model}, {mel} mel bins x {T} frames; GFLOPs = forward+backward per sample; tokens: those a "
        f"training step sees (a token-dropping phase keeps some of its grid)",
        f"{'schedule':<{w}} {'phase':>5} {'method':<9} {'C':>3} {'tokens':<18} {'epochs':>7} {'GFLOPs/step':>12}"
        f" {'GFLOPs total':>13} {'saving':>8}",
    ]
    for r in rows:
        for i, ph in enumerate(r["phases"]):
            last = i == len(r["phases"]) - 1
            f, t = ph["grid"]
            tokens = (
                "-"
                if not ph["tokens"]
                else f"{ph['tokens']} ({f}x{t})"
                if ph["kept_tokens"] == ph["tokens"]
                else f"{ph['kept_tokens']} of {ph['tokens']} ({f}x{t})"
            )
            lines.append(
                f"{r['schedule'] if i == 0 else '':<{w}} {i + 1:>5} {ph['method']:<9} {ph['C']:>3} {tokens:<18}"
                f" {ph['epochs']:>7g} {ph['gflops_per_sample_step']:>12.2f}"
                + (f" {r['gflops_per_sample_total']:>13.1f} {100 * r['saving_vs_none']:>7.1f}%" if last else "")
            )
    return "\n".join(lines)


MAX_FRAMES = 8_640_000  # flops: a day of audio at a 10 ms frame shift


def cmd_flops(a) -> int:
    cfgs = [
        train_config({"schedule": s, "model": a.model, "model_kwargs": given_model_settings(a)})
        for s in (a.schedule or ["none:1x20"])
    ]
    schedules = [cfg.schedule for cfg in cfgs]
    if a.target_length:
        T = a.target_length
    else:  # AST pads e.g. 998 frames (10 s) to 1024: round up to a multiple of granularity x max C
        frames = 1 + int((a.seconds * 16000 - 400) // 160)
        q = get_family(a.model).quantum([C for s in schedules for C in s.grid_Cs])
        T = math.ceil(frames / q) * q
    if T > MAX_FRAMES:  # past this FlopCounterMode's tensor sizes overflow
        given = f"--target-length {a.target_length}" if a.target_length else f"--seconds {a.seconds:g}"
        raise C2FError(f"{given}: {T} frames is more than {MAX_FRAMES}, a day of audio at 10 ms; count a shorter clip")
    rows = flops_table(cfgs, a.num_mel_bins, T, a.num_classes)
    if a.json:
        print(
            json.dumps(
                {"model": a.model, "num_mel_bins": a.num_mel_bins, "target_length": T, "schedules": rows}, indent=1
            )
        )
    else:
        print(format_table(rows, a.model, a.num_mel_bins, T))
    return 0


def add_parser(sub) -> None:
    from ..models import list_models

    f = sub.add_parser(
        "flops",
        help="training FLOPs per phase and schedule, and the saving against none",
        epilog=EPILOG_SCHEDULE,
        description="Count training FLOPs (forward+backward per sample) per phase with torch's "
        "FlopCounterMode, attention included.",
    )
    f.add_argument("--schedule", action="append", help="repeat for several schedules (default none:1x20)")
    f.add_argument("--model", default="ast-base", choices=list_models())
    f.add_argument(
        "--seconds", type=positive_float, default=10.0, help="clip length; frames are rounded up like AST's 1024"
    )
    f.add_argument("--target-length", type=positive_int, help="frames at full resolution (overrides --seconds)")
    f.add_argument("--num-mel-bins", type=positive_int, default=128)
    f.add_argument("--num-classes", type=positive_int, default=527)
    add_model_setting_args(f)
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(fn=cmd_flops)
