"""Command-line pieces shared by every command: a parser whose errors are one line, argument
types that refuse out-of-range values, and the data and training flags, whose defaults are
``TrainConfig``'s."""

from __future__ import annotations

import argparse
import math
import sys

from ..config import LOSSES, LR_SCHEDULES, MAX_SEED, PRECISIONS, defaults
from ..errors import ConfigError
from ..settings import flag, given

EPILOG_SCHEDULE = (
    "Schedules are METHOD:CxEPOCHS,...,1xEPOCHS with METHOD in none, fshift, avgpool, maxpool, "
    "patch-bl, patch-pi (shorter input) or tpatchout, fpatchout, patchout (token dropping, AST and "
    "SSAST only; docs/methods.md); e.g. fshift:4x5,1x15 or patch-pi:4x3,2x3,1x14 or none:1x20. "
    "A coarse phase may name its own method, which holds until the next: "
    "avgpool:4x2,tpatchout:2x2,1x6. Table 1's coarse-only ablation: avgpool:2x20,coarse-only."
)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit code 2), pointing at --help."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _typed(conv, ok, what):
    def parse(text):
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return v

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _typed(int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonneg_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = _typed(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
finite_float = _typed(float, math.isfinite, "a finite number")
seed_int = _typed(int, lambda v: 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")


def add_log_arg(p, who: str) -> None:
    """--log TRACKER, repeatable: experiment trackers for `who`."""
    p.add_argument(
        "--log",
        action="append",
        type=tracker,
        metavar="TRACKER",
        help=f"log {who} to an experiment tracker (repeat for several): tensorboard (event files in the run's "
        "folder), mlflow[=URI] (a tracking URI: sqlite:///PATH.db, http(s)://HOST:PORT, a database URI; default: "
        "DIR/mlruns/mlflow.db), "
        "wandb[=PROJECT] (offline, in DIR, unless you have logged in). Needs pip install 'c2f-search[track]'; "
        "docs/tracking.md",
    )


def tracker(text: str) -> str:
    from ..train.callbacks.tracking import Tracker

    try:
        return str(Tracker.parse(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def out_path(text: str) -> str:
    """An --out folder or file: not empty (that would be the current folder), not a link to nothing."""
    import os
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; give a folder, e.g. runs/x")
    if Path(text).is_symlink() and not Path(text).exists():
        raise argparse.ArgumentTypeError(
            f"{text} is a symbolic link to {os.readlink(text)}, which does not exist; "
            f"create that or choose another --out"
        )
    return text


def config_error_line(e: ConfigError) -> str:
    return f"{flag(e.field)}: {e.problem}"


def add_data_args(p: argparse.ArgumentParser, required=True) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        required=required,
        metavar="DATA",
        help="builtin:events[?train=N&val=N&seed=N], an AST JSON datafile, or a folder DIR with "
        "train/<class>/*.wav and test/<class>/*.wav",
    )
    g.add_argument("--val", metavar="DATA", help="validation data (default: the val/test split of --data)")
    g.add_argument("--labels", metavar="CSV", help="class_labels_indices.csv (default: beside the datafile)")
    g.add_argument(
        "--task",
        choices=("auto", "single", "multi"),
        default=None,
        help="single-label (CE, accuracy) or multi-label (BCE, mAP); default auto, from the labels",
    )
    g.add_argument(
        "--skip-bad",
        action="store_true",
        default=None,
        help="skip unreadable/empty/NaN clips and unknown labels, and list them at the end",
    )
    g.add_argument("--num-mel-bins", type=positive_int, help="mel bins (default 128; 64 for builtin:events)")
    g.add_argument(
        "--target-length",
        type=positive_int,
        help="frames at full resolution (default: derived from the data, the length that covers 95%% "
        "of the training clips rounded up to a multiple of the largest C x the model's frames per time token; "
        "builtin:events: 256)",
    )
    g.add_argument(
        "--norm",
        default=None,
        help="fbank normalization: auto (computed from the training set, the default), a data set "
        "name (audioset, esc50, speechcommands, vggsound, voxceleb) or MEAN,STD",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        default=None,
        help="do not keep fbank features in the Arrow cache ($C2F_CACHE, default ~/.cache/c2f-search)",
    )
    from ..data.store import FEATURE_MODES

    g.add_argument(
        "--features",
        choices=FEATURE_MODES,
        default=None,
        help="fp32: float32 fbank store (default); fp16: a store of half the size; stream: no store, "
        "fbank computed per batch in worker processes (docs/benchmarks.md sizes each)",
    )
    g.add_argument(
        "--stream-workers",
        type=positive_int,
        metavar="N",
        help="worker processes for --features stream (default: the CPU cores available, less one)",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    from ..models import list_models
    from ..recipes import list_recipes

    d = defaults()
    g = p.add_argument_group("model and training (defaults: TrainConfig's)")
    g.add_argument("--model", choices=list_models(), help=f"model name (default {d['model']})")
    g.add_argument(
        "--recipe",
        choices=list_recipes(),
        help="a published recipe (docs/recipes.md): epochs, front end, model, LR schedule, augmentation, "
        "sampler, weight averaging; the flags given override it",
    )
    add_model_setting_args(g)
    g.add_argument(
        "--init",
        metavar="PATH",
        help="local file to start from (never downloaded): a c2f-search checkpoint (final.pt, last.pt, "
        "averaged.pt; e.g. an SSAST encoder from 'pretrain'), for AST models also a timm/DeiT state "
        "dict, an official AST checkpoint (module.v.* keys) or a Hugging Face AST folder (config.json and "
        "model.safetensors, transformers 4 or 5; its distillation token is dropped for a model built "
        "without --dist-token, as for a DeiT file)",
    )
    g.add_argument("--lr", type=positive_float, help=f"Adam learning rate (default {d['lr']:g})")
    g.add_argument("--batch-size", type=positive_int, help=f"default {d['batch_size']}")
    g.add_argument("--weight-decay", type=nonneg_float, help=f"default {d['weight_decay']:g}")
    g.add_argument(
        "--warmup-steps",
        type=nonneg_int,
        help=f"linear LR warmup at the start of every phase (default {d['warmup_steps']})",
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="step: x --lr-gamma at --lr-milestones (AST's); cosine: to 0 at each phase's end "
        f"(default {d['lr_schedule']})",
    )
    g.add_argument(
        "--lr-milestones",
        type=positive_float,
        nargs="*",
        help="epochs from each phase start at which the LR is multiplied by --lr-gamma",
    )
    g.add_argument("--lr-gamma", type=positive_float, help=f"default {d['lr_gamma']}")
    g.add_argument("--freqm", type=nonneg_int, help="SpecAugment frequency mask width in bins (default 0)")
    g.add_argument(
        "--timem", type=nonneg_int, help="SpecAugment time mask width at full resolution in frames (default 0)"
    )
    g.add_argument("--mixup", type=fraction, help="fraction of each batch mixed, in [0, 1] (default 0; AST: 0.5)")
    g.add_argument("--loss", choices=LOSSES, help="auto: BCE for multi-label data, CE otherwise (default auto)")
    g.add_argument(
        "--balanced-sampling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="AST's balanced sampler: clips drawn with replacement, weighted by 1000/(label count+0.01)",
    )
    g.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="AST's noise augmentation (Speech Commands): uniform noise and a random roll in time",
    )
    g.add_argument(
        "--weight-averaging",
        metavar="SPEC",
        help="average final-phase checkpoints and report the averaged model as its own row: from:E "
        "(every evaluation from epoch E on, AST) or top:K (the K best, HTS-AT: top:15)",
    )
    g.add_argument("--seed", type=seed_int, help=f"default {d['seed']}")
    g.add_argument(
        "--transition",
        metavar="RULE",
        help="how the auto phases of an adaptive schedule (fshift:4xauto,2xauto,1x12) end: "
        "plateau:patience=2,delta=0.002[,max=EPOCHS,budget=EPOCHS] or "
        "probe:steps=10[,score=flops|time,max=EPOCHS,budget=EPOCHS]; max caps each auto phase "
        "(default: the final phase's length), budget is the total compute in full-resolution epochs",
    )
    g.add_argument(
        "--eval-every",
        metavar="N|Xepoch",
        help="evaluate every N steps or X epochs (e.g. 0.25epoch) as well as at every epoch end",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32, tf32 (CUDA matmuls), bf16 or fp16 (autocast; fp16 with a GradScaler); default auto: "
        "bf16 on a CUDA device that has it, else fp16, and fp32 on the CPU",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the training step once per phase (CUDA graphs on CUDA); default: on for "
        "CUDA, off for the CPU",
    )


def add_model_setting_args(g) -> None:
    """One flag per model setting, generated from the schemas the registered model families own."""
    from ..models import model_settings

    for name, st in sorted(model_settings().items()):
        if st.type is bool:
            g.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None, help=st.help)
        elif st.type is int:
            g.add_argument(
                flag(name), type=_typed(int, lambda v, lo=st.low: v >= lo, f"an integer >= {st.low:g}"), help=st.help
            )
        else:
            g.add_argument(
                flag(name),
                help=st.help,
                type=_typed(
                    float, lambda v, lo=st.low, hi=st.high: lo <= v < hi, f"a number in [{st.low:g}, {st.high:g})"
                ),
            )


def given_model_settings(a) -> dict:
    """The model settings given on the command line."""
    from ..models import model_settings

    return given(a, model_settings())


TRAIN_FLAGS = (
    "model",
    "init",
    "lr",
    "batch_size",
    "weight_decay",
    "warmup_steps",
    "lr_schedule",
    "lr_milestones",
    "lr_gamma",
    "freqm",
    "timem",
    "mixup",
    "seed",
    "metric_target",
    "transition",
    "eval_every",
    "loss",
    "balanced_sampling",
    "noise",
    "weight_averaging",
    "mask_patches",
    "precision",
    "compile",
)


def given_config(a) -> dict:
    """The training settings (``TrainConfig`` fields) given on the command line."""
    out = given(a, TRAIN_FLAGS)
    if "lr_milestones" in out:
        out["lr_milestones"] = tuple(out["lr_milestones"])
    kw = given_model_settings(a)
    if kw:
        out["model_kwargs"] = kw
    return out
