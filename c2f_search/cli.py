"""The ``c2f-search`` command line."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

EPILOG_SCHEDULE = ("Schedules are METHOD:CxEPOCHS,...,1xEPOCHS with METHOD in none, fshift, avgpool, maxpool, "
                   "patch-bl, patch-pi; e.g. fshift:4x5,1x15 or patch-pi:4x3,2x3,1x14 or none:1x20.")


def _add_data_args(p: argparse.ArgumentParser, required=True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="DATA",
                   help="builtin:events[?train=N&val=N&seed=N], an AST JSON datafile, or a folder DIR with "
                        "train/<class>/*.wav and test/<class>/*.wav")
    g.add_argument("--val", metavar="DATA", help="validation data (default: the val/test split of --data)")
    g.add_argument("--labels", metavar="CSV", help="class_labels_indices.csv (default: beside the datafile)")
    g.add_argument("--task", choices=("auto", "single", "multi"), default="auto",
                   help="single-label (CE, accuracy) or multi-label (BCE, mAP); auto detects from the labels")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable/empty/NaN clips and unknown labels, and list them at the end")
    g.add_argument("--num-mel-bins", type=int, help="mel bins (default 128; 64 for builtin:events)")
    g.add_argument("--target-length", type=int, help="frames at full resolution (default 1024; 256 for builtin:events)")
    g.add_argument("--norm", default="auto",
                   help="fbank normalization: auto (computed from the training set), a data set name "
                        "(audioset, esc50, speechcommands, vggsound, voxceleb) or MEAN,STD")
    g.add_argument("--no-cache", action="store_true", help="do not keep fbank features in the Arrow cache "
                   "($C2F_CACHE, default ~/.cache/c2f-search)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import list_models
    g = p.add_argument_group("model and training")
    g.add_argument("--model", default="ast-tiny", choices=list_models(), help="model name (default ast-tiny)")
    g.add_argument("--depth", type=int, help="transformer depth (default 12)")
    g.add_argument("--dist-token", action="store_true", help="add DeiT's distillation token (2 prefix tokens)")
    g.add_argument("--stride", type=int, help="patch stride for overlapping patches (AST used 10; default 16)")
    g.add_argument("--init", metavar="PATH", help="local timm/DeiT checkpoint to start from (never downloaded)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (AST: 1e-4)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--warmup-steps", type=int, default=20, help="linear LR warmup at the start of every phase")
    g.add_argument("--lr-milestones", type=float, nargs="*", default=(),
                   help="epochs from each phase start at which the LR is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.5)
    g.add_argument("--freqm", type=int, default=0, help="SpecAugment frequency mask width (bins)")
    g.add_argument("--timem", type=int, default=0, help="SpecAugment time mask width at full resolution (frames)")
    g.add_argument("--mixup", type=float, default=0.0, help="fraction of each batch mixed (AST: 0.5 on AudioSet)")
    g.add_argument("--seed", type=int, default=0)


def _norm(text: str):
    from .frontend import DATASET_STATS
    if text == "auto":
        return None
    if text.lower() in DATASET_STATS:
        return DATASET_STATS[text.lower()]
    try:
        mean, std = (float(v) for v in text.split(","))
        return mean, std
    except ValueError:
        raise SystemExit(f"--norm {text!r}: use auto, one of {', '.join(DATASET_STATS)}, or MEAN,STD") from None


def model_kwargs(a) -> dict:
    kw = {}
    if a.depth:
        kw["depth"] = a.depth
    if a.dist_token:
        kw["dist_token"] = True
    if a.stride:
        kw["stride"] = (a.stride, a.stride)
    if a.init:
        kw["init"] = a.init
    return kw


def train_config(a, schedule: str):
    from .train import TrainConfig
    return TrainConfig(schedule=schedule, model=a.model, model_kwargs=model_kwargs(a), lr=a.lr,
                       batch_size=a.batch_size, warmup_steps=a.warmup_steps, lr_milestones=tuple(a.lr_milestones),
                       lr_gamma=a.lr_gamma, freqm=a.freqm, timem=a.timem, mixup=a.mixup, seed=a.seed,
                       metric_target=getattr(a, "metric_target", None))


def load_data(a, progress=True):
    from .train import Data
    return Data.from_specs(a.data, a.val, a.labels, a.task, a.skip_bad, _norm(a.norm),
                           None if a.no_cache else "auto", progress,
                           num_mel_bins=a.num_mel_bins, target_length=a.target_length)


# ---------------------------------------------------------------------------- train
def cmd_train(a) -> int:
    import pyarrow as pa
    from tqdm import tqdm

    from .results import write_table
    from .train import Run, load_checkpoint, save_checkpoint

    out = Path(a.out)
    ckdir = out / "checkpoints"
    data = load_data(a)
    cfg = train_config(a, a.schedule)
    state = None
    if a.resume:
        if not (ckdir / "last.pt").exists():
            raise SystemExit(f"--resume: {ckdir / 'last.pt'} not found; run without --resume to start")
        state = load_checkpoint(ckdir / "last.pt")
        if state["config"]["schedule"] != cfg.schedule:
            raise SystemExit(f"--resume: {out} holds a run of {state['config']['schedule']}, not {cfg.schedule}")
    run = Run(cfg, data, a.device, state)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"config": vars(cfg) | {"betas": list(cfg.betas)},
                                                 "frontend": data.fe.key(), "norm": [data.mean, data.std],
                                                 "classes": data.train.classes}, indent=1, default=str))
    bar = tqdm(total=run.total_steps, initial=run.step, unit="step", disable=a.no_progress, dynamic_ncols=True)

    n_phases = len(run.schedule.phases)

    def step():
        bar.set_description(f"phase {run.phase + 1}/{n_phases} C={run.C}", refresh=False)
        bar.update(1)

    def show(r, rec):
        bar.set_postfix(epoch=f"{rec['epoch']:.2f}/{r.schedule.total_epochs:g}", loss=f"{rec['train_loss']:.3f}",
                        **{r.metric_name: f"{rec['val_metric']:.3f}"})
    run.on_step = step
    print(f"training {run.schedule} | {cfg.model} | {len(data.train)} train / {len(data.val)} val clips | "
          f"{data.num_classes} classes ({run.metric_name}) | device {run.device}", file=sys.stderr)
    for rec in run.records(progress=show):
        state = run.state_dict()
        if rec["phase_end"] and not rec["schedule_done"]:
            save_checkpoint(state, ckdir / f"phase{rec['phase']}-C{rec['C']}.pt")
        save_checkpoint(state, ckdir / "last.pt")
        write_table(pa.Table.from_pylist(run.history), out / "metrics.parquet")
    bar.close()
    save_checkpoint(run.state_dict(), ckdir / "final.pt")
    last = run.history[-1]
    msg = "reached --metric-target" if last["target_reached"] else "schedule finished"
    print(f"{msg}: {run.metric_name} {last['val_metric']:.4f} at epoch {last['epoch']:.2f}, "
          f"{last['train_flops'] / 1e12:.2f} TFLOPs, {last['wall_time_s']:.0f}s -> {out}/metrics.parquet")
    _bad_report(data, out)
    return 0


def _bad_report(data, out: Path) -> None:
    bad = data.bad_report()
    if bad:
        (out / "skipped_clips.txt").write_text("".join(f"{f}\t{p}\n" for f, p in bad))
        print(f"--skip-bad: skipped {len(bad)} clips, listed in {out / 'skipped_clips.txt'}", file=sys.stderr)
        for f, p in bad[:5]:
            print(f"  {f}: {p}", file=sys.stderr)


# ---------------------------------------------------------------------------- flops
def cmd_flops(a) -> int:
    from .schedule import parse_schedule
    from .flops_table import flops_table, format_table

    schedules = [parse_schedule(s) for s in (a.schedule or ["none:1x20"])]
    if a.target_length:
        T = a.target_length
    else:  # AST pads e.g. 998 frames (10 s) to 1024: round up to a multiple of 16 * max C
        frames = 1 + int((a.seconds * 16000 - 400) // 160)
        q = 16 * max(s.max_C for s in schedules)
        T = math.ceil(frames / q) * q
    rows = flops_table(schedules, a.model, a.num_mel_bins, T, a.num_classes, model_kwargs(a))
    if a.json:
        print(json.dumps({"model": a.model, "num_mel_bins": a.num_mel_bins, "target_length": T, "schedules": rows},
                         indent=1))
    else:
        print(format_table(rows, a.model, a.num_mel_bins, T))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="c2f-search",
        description="Search coarse-to-fine training schedules for audio spectrogram transformers "
                    "(Feng et al., 'From Coarse to Fine', ICASSP 2024).",
        epilog=EPILOG_SCHEDULE)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train one schedule (no Ray)", epilog=EPILOG_SCHEDULE,
                       description="Train one coarse-to-fine schedule and write DIR/metrics.parquet "
                                   "(one row per epoch) and checkpoints (one per phase, final, last).")
    t.add_argument("--schedule", required=True, help="e.g. fshift:2x2,1x4")
    t.add_argument("--out", default="runs/train", metavar="DIR", help="output folder (default runs/train)")
    t.add_argument("--metric-target", type=float,
                   help="budget mode: stop at the first epoch whose validation metric reaches this value")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints/last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_args(t)
    _add_model_args(t)
    t.set_defaults(fn=cmd_train)

    f = sub.add_parser("flops", help="training FLOPs per phase and schedule, and the saving against none",
                       epilog=EPILOG_SCHEDULE,
                       description="Count training FLOPs (forward+backward per sample) per phase with torch's "
                                   "FlopCounterMode, attention included.")
    from .models import list_models
    f.add_argument("--schedule", action="append", help="repeat for several schedules (default none:1x20)")
    f.add_argument("--model", default="ast-base", choices=list_models())
    f.add_argument("--seconds", type=float, default=10.0, help="clip length; frames are rounded up like AST's 1024")
    f.add_argument("--target-length", type=int, help="frames at full resolution (overrides --seconds)")
    f.add_argument("--num-mel-bins", type=int, default=128)
    f.add_argument("--num-classes", type=int, default=527)
    f.add_argument("--depth", type=int)
    f.add_argument("--dist-token", action="store_true")
    f.add_argument("--stride", type=int)
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.set_defaults(fn=cmd_flops, init=None)

    from . import search_cli
    search_cli.add_commands(sub, _add_data_args, _add_model_args)
    return p


def main(argv=None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "fn", None):
        parser.print_help()
        return 2
    from .data import DataError
    from .frontend import AudioError
    from .schedule import ScheduleError
    from .spaces import SpaceError
    try:
        return a.fn(a) or 0
    except (DataError, AudioError, ScheduleError, SpaceError, FileNotFoundError) as e:
        print(f"c2f-search {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
